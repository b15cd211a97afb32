"""Failover, switchover and fencing: decide, promote, re-point, fence, one at a time.

**Automatic failover** (:func:`on_primary_down`, called by the health sweep once the
primary failed ``failure_threshold`` consecutive probes) and **manual failover**
(:func:`fail_over`) run the same procedure, each step recorded with its time in the
:class:`~endpoints.models.FailoverEvent` (saved after every step, so the audit trail
survives a crash of the worker):

1. *Lock.* A Redis lock per cluster (:func:`lock_key`), taken without waiting: a second
   worker, on this machine or another, gets :class:`FailoverInProgress` (and
   ``on_primary_down`` returns ``None``). Its TTL (:data:`LOCK_TTL_S`) is renewed after
   every step, so a worker that dies mid-failover blocks the cluster for one TTL at most.
   Without Redis there is no failover: two workers could otherwise promote two replicas.
2. *Plan.* Every enabled, unfenced replica (and the primary, once more) is probed
   concurrently and :func:`choose_failover_candidate` decides. Nothing qualifies: the
   event is *aborted*, saying why, and a critical alert goes out.
3. *Fence the old primary's writes*, only if it still answers as a writable primary
   (a manual failover of a live primary): see :func:`refuse_writes`.
4. *Promote* the candidate (``pg_promote(wait => true)``) and verify with a new
   connection that it left recovery.
5. *Registry*, one transaction: the old primary becomes a *fenced* replica (still
   enabled, so probes keep watching it for a split brain), the candidate the primary;
   then the topology version is bumped, so every router sends writes to it within a
   second. This comes before re-pointing the replicas on purpose: writes need only the
   new primary, and the replicas may take seconds to reconnect.
6. *Re-point* every other enabled replica: its replication slot (``primary_slot_name``)
   is created on the new primary first, then only host and port of its own
   ``primary_conninfo`` are rewritten (``ALTER SYSTEM`` + ``pg_reload_conf()``; PostgreSQL
   13+ applies it on reload), so no replication credentials are needed here: each replica
   keeps the user and password it already had. Then each must be seen streaming from the
   new primary (``pg_stat_wal_receiver``) within :data:`STREAM_WAIT_S`.
7. *Outcome* ``succeeded`` and an alert. A promotion cannot be undone, so a replica that
   does not follow does not turn a done failover into a failed one: its step is recorded
   as failed and a critical alert asks for it to be rebuilt.

A failure before the promotion leaves the registry as it was (outcome *failed*, critical
alert). A failure *during* it (``pg_promote`` timed out or errored, or recovery did not
end) fences the candidate in the registry: it may still finish promoting, and a server
that might be a second primary must get no traffic.

**Switchover** (:func:`switchover`) is for a healthy primary and loses nothing: the old
primary refuses new writes and its client sessions are ended, its final WAL position is
read, the candidate must replay up to it within ``timeout_s`` (else the old primary is
made writable again and the switchover is aborted), then steps 4-7. The old primary stays
up, read-only and fenced until it is rebuilt as a replica (``manage.py local_cluster
rebuild NODE`` for the local cluster) and re-admitted (:func:`readmit`).

**Candidate choice.** Eligible: enabled, answering, in recovery, not fenced, *observed
streaming from the cluster's current primary*, and no more than ``max_failover_lag_bytes``
behind the most advanced WAL position known: the highest of the primary's (live when it
answers, else the last one the registry recorded) and of every answering replica's
received and replayed positions. The old primary is usually gone, and the WAL a replica
*received* proves how far the primary got, even if no replica replayed it (a replica with
replay paused receives on). The most WAL replayed wins, then ``promotion_priority``, then
weight, then the name.

*Observed streaming* is seen from the primary's side, which a server that merely answers
probes as a replica cannot forge (:mod:`endpoints.health.upstream`): the primary's
``pg_stat_replication`` must show a walsender in state ``streaming`` whose
``application_name`` is the endpoint's registered name and whose ``client_addr`` is one of
the addresses the endpoint's registered host resolves to. When the primary answers as a
primary (a manual failover of a live primary, a switchover) its walsenders are read live,
by the same probe; when it does not (automatic failover, a manual failover of a dead
primary), what sweeps recorded counts: ``Endpoint.upstream``, which every sweep in which
the primary answered sets (the primary, or NULL) and no other sweep touches, so the last
observation made while the primary was alive decides (the plan gives its age). An
endpoint registered at a host of someone's choosing, or under a name that is not its
walsender's, is therefore never promoted, and the real replicas are never re-pointed at
it. Nor is a replica never seen streaming: one added after the primary went down, a
cascading standby (it streams from another replica), every replica when pgwarden's role
lacks ``pg_read_all_stats`` (``client_addr`` is then NULL: the plan says so), and, just
after a failover, every replica until a sweep has seen it stream from the new primary
(sweeps run every second; replicas reconnect within ``wal_retrieve_retry_interval``).
Host names are resolved by pgwarden (``getaddrinfo``, cached for a minute): whoever
controls a name's DNS controls the addresses it matches, so register endpoints by IP
address, or under names whose DNS you trust.

**What the database role needs.** pgwarden connects to every endpoint with its registered
user. In production that role needs: ``EXECUTE`` on ``pg_promote(boolean, integer)``;
``ALTER SYSTEM`` on the parameters ``primary_conninfo`` and ``default_transaction_read_only``
(``GRANT ALTER SYSTEM ON PARAMETER ...``, PostgreSQL 15; before, superusers only) and ``EXECUTE`` on
``pg_reload_conf()``; membership in ``pg_read_all_settings`` (to read ``primary_conninfo``),
``pg_read_all_stats`` (``pg_stat_wal_receiver``, and ``client_addr`` and ``state`` in
``pg_stat_replication``: without it no replica is seen streaming, so none is promoted) and
``pg_signal_backend`` (to end client sessions); the ``REPLICATION`` attribute, or ``EXECUTE`` on
``pg_create_physical_replication_slot``, to create slots. Or be a superuser, as the local
cluster's application role is.

**Assumptions.** PostgreSQL 14 or later (``primary_conninfo`` applied on reload: 13;
``pg_terminate_backend`` with a timeout: 14). For clusters not run by pgwarden: replicas
reach the new primary at its registered host and port, with the replication credentials
already in their own ``primary_conninfo``; ``recovery_target_timeline`` is ``latest``
(the default), so they follow the new timeline. Each replica's walsender must carry the
name it is registered under: set ``cluster_name`` to that name on the replica, or
``application_name`` in its ``primary_conninfo`` (which wins over ``cluster_name``; with
neither, every walsender is called ``walreceiver`` and no replica can be promoted). And
each replica must connect to the primary over TCP from an address its registered host
resolves to: not through a Unix socket, nor through NAT or a proxy that changes the
source address. pgwarden's own cluster (``manage.py local_cluster``) sets ``cluster_name``
to the node's name and registers it under that name. ``default_transaction_read_only`` stops
pgwarden's routed writes and well-behaved clients, not a superuser who turns it off again
(nor can ``pg_signal_backend`` end a superuser's sessions): with synchronous replication,
an old primary cut off from its standbys cannot acknowledge a commit at all. Note that
``ALTER SYSTEM SET primary_conninfo`` carries the replica's replication password in its
text, as ``pg_basebackup -R`` already wrote it to ``postgresql.auto.conf``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, LiteralString

import psycopg
import redis
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from endpoints.alerts import notify_event
from endpoints.core.crypto import DecryptionError, redact, remember
from endpoints.health import upstream
from endpoints.health.probe import ProbeResult, check_endpoints
from endpoints.health.upstream import Streaming, recorded_streaming, streaming_from_primary
from endpoints.models import Alert, Cluster, Endpoint, FailoverEvent, Role, State
from endpoints.routing import topology

logger = logging.getLogger("pgwarden.failover")

# Renewed after every step; a step is bounded well below it (promotion, catch-up, streaming).
LOCK_TTL_S = 90
PROMOTE_WAIT_S = 30
PROMOTION_VERIFY_S = 10.0
# Replicas retry their primary every wal_retrieve_retry_interval (5 s by default).
STREAM_WAIT_S = 30.0
# How long refuse_writes waits for the read-only setting to reach new sessions, and for
# each ended session to exit.
READ_ONLY_WAIT_S = 5.0
TERMINATE_WAIT_MS = 5000
REDIS_TIMEOUT_S = 2.0
APPLICATION_NAME = "pgwarden-failover"
# How long a plan waits for DNS to resolve replica hosts not in the resolver's cache.
RESOLVE_WAIT_S = 2.0


class FailoverError(Exception):
    """A failover, switchover, fence or re-admission could not be done; says why and what to do."""


class FailoverInProgress(FailoverError):
    """Another worker holds this cluster's failover lock."""


class UnknownEndpoint(FailoverError):
    """``to`` names no endpoint of the cluster, or names its primary."""


class PrimaryUnavailable(FailoverError):
    """A switchover needs a healthy primary, and this one is down, missing or in recovery."""


class NotReadmittable(FailoverError):
    """A fenced endpoint cannot be re-admitted yet: it must answer as a replica."""


@dataclass(frozen=True)
class CandidateState:
    """What the decision needs to know about one replica, detached from the ORM."""

    name: str
    enabled: bool
    answered: bool
    in_recovery: bool | None
    fenced: bool
    # Bytes since 0/0: replayed WAL (what the replica serves now).
    wal_lsn: int | None
    # Lag behind the primary measured while it was up (e.g. by a sweep), if any; the decision
    # uses the larger of it and the lag it computes itself.
    lag_bytes: int | None
    promotion_priority: int
    weight: int
    # Whether the current primary's pg_stat_replication shows it streaming (live, or as the
    # last sweep in which the primary answered recorded it), and what was seen.
    streaming: Streaming
    # WAL received but maybe not replayed yet: evidence of how far the primary got.
    received_lsn: int | None = None
    # Why it did not answer, for the plan's explanation.
    error: str = ""


@dataclass(frozen=True)
class FailoverPlan:
    """The decision and its explanation: shown before a manual failover, recorded in events."""

    candidate: str | None
    reason: str
    # Eligible replicas, best first.
    ranking: tuple[str, ...]
    # Replica name -> why it cannot be promoted.
    excluded: Mapping[str, str]
    # Replica name -> bytes behind ``reference_lsn`` (replicas whose position is known).
    lag_bytes: Mapping[str, int] = field(default_factory=dict)
    reference_lsn: int | None = None
    # Filled by plan_failover: the registered primary and whether it answers as a primary.
    primary: str | None = None
    primary_answers: bool | None = None

    @property
    def candidate_lag_bytes(self) -> int | None:
        return None if self.candidate is None else self.lag_bytes.get(self.candidate)


def format_lsn(position: int) -> str:
    """Bytes since 0/0 as PostgreSQL writes an LSN (``0/3000148``)."""
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


def choose_failover_candidate(
    replicas: Sequence[CandidateState],
    max_lag_bytes: int,
    *,
    to: str | None = None,
    primary_lsn: int | None = None,
) -> FailoverPlan:
    """Pick the replica to promote: pure, so every rule is tested without a server.

    Lag is measured against the most advanced position known: ``primary_lsn`` (live, or the
    last one recorded) and every answering replica's received and replayed positions,
    whichever is highest. ``to`` forces that replica, which must still be eligible.
    """
    evidence = [primary_lsn] if primary_lsn is not None else []
    for replica in replicas:
        if replica.answered and replica.in_recovery:
            evidence += [lsn for lsn in (replica.wal_lsn, replica.received_lsn) if lsn is not None]
    reference = max(evidence, default=None)

    excluded: dict[str, str] = {}
    lags: dict[str, int] = {}
    eligible: list[CandidateState] = []
    for replica in replicas:
        lag = _lag(replica, reference)
        if lag is not None:
            lags[replica.name] = lag
        why = _ineligibility(replica, lag, reference, max_lag_bytes)
        if why:
            excluded[replica.name] = why
        else:
            eligible.append(replica)
    eligible.sort(key=_rank_key)
    ranking = tuple(replica.name for replica in eligible)
    plan = FailoverPlan(
        candidate=None,
        reason="",
        ranking=ranking,
        excluded=excluded,
        lag_bytes=lags,
        reference_lsn=reference,
    )

    if to is not None:
        if to in excluded:
            return replace(
                plan, reason=f"{to} was requested but cannot be promoted: {excluded[to]}"
            )
        if to not in ranking:
            return replace(plan, reason=f"{to} is not a replica of this cluster")
        chosen = next(replica for replica in eligible if replica.name == to)
        return replace(plan, candidate=to, reason=f"{to} as requested: {_position(chosen, lags)}")
    if not eligible:
        if not replicas:
            return replace(plan, reason="the cluster has no replica")
        details = "; ".join(f"{name}: {why}" for name, why in excluded.items())
        return replace(plan, reason=f"no replica qualifies ({details})")
    best = eligible[0]
    reason = f"{best.name} has the most WAL replayed: {_position(best, lags)}"
    if len(eligible) > 1:
        reason += _tie_break(best, eligible[1])
    return replace(plan, candidate=best.name, reason=reason)


def _lag(replica: CandidateState, reference: int | None) -> int | None:
    computed = (
        None
        if reference is None or replica.wal_lsn is None
        else max(0, reference - replica.wal_lsn)
    )
    known = [lag for lag in (computed, replica.lag_bytes) if lag is not None]
    return max(known, default=None)


def _ineligibility(
    replica: CandidateState, lag: int | None, reference: int | None, max_lag_bytes: int
) -> str:
    """Why ``replica`` cannot be promoted, or "" if it can."""
    if not replica.enabled:
        return "disabled"
    if replica.fenced:
        return "fenced"
    if not replica.answered:
        return f"did not answer ({replica.error})" if replica.error else "did not answer"
    if not replica.in_recovery:
        return "not in recovery: it already accepts writes (a second primary?)"
    if not replica.streaming.observed:
        return f"not seen streaming from the primary: {replica.streaming.detail}"
    if replica.wal_lsn is None or lag is None:
        return "its WAL position is unknown"
    if lag > max_lag_bytes:
        against = f" {format_lsn(reference)}" if reference is not None else ""
        return (
            f"{lag} bytes behind the most advanced known WAL position{against}, over the "
            f"cluster's max failover lag of {max_lag_bytes} bytes"
        )
    return ""


def _rank_key(replica: CandidateState) -> tuple[int, int, int, str]:
    return (-(replica.wal_lsn or 0), -replica.promotion_priority, -replica.weight, replica.name)


def _position(replica: CandidateState, lags: Mapping[str, int]) -> str:
    replayed = format_lsn(replica.wal_lsn) if replica.wal_lsn is not None else "unknown"
    return (
        f"replayed up to {replayed}, {lags.get(replica.name, 0)} bytes behind; "
        f"{replica.streaming.detail}"
    )


def _tie_break(best: CandidateState, runner_up: CandidateState) -> str:
    if best.wal_lsn != runner_up.wal_lsn:
        return ""
    if best.promotion_priority != runner_up.promotion_priority:
        return (
            f"; tied with {runner_up.name} on WAL, higher promotion priority "
            f"({best.promotion_priority} > {runner_up.promotion_priority})"
        )
    if best.weight != runner_up.weight:
        return (
            f"; tied with {runner_up.name} on WAL and priority, higher weight "
            f"({best.weight} > {runner_up.weight})"
        )
    return f"; tied with {runner_up.name} on WAL, priority and weight, first by name"


# Probing the cluster


@dataclass(frozen=True)
class _Survey:
    """The registry's view of the cluster plus one fresh probe of each endpoint that matters."""

    cluster: Cluster
    primary: Endpoint | None
    primary_result: ProbeResult | None
    # (replica, probe) pairs; probe None when it was not probed (disabled or fenced).
    replicas: tuple[tuple[Endpoint, ProbeResult | None], ...]

    @property
    def primary_writable(self) -> bool:
        result = self.primary_result
        return result is not None and result.ok and result.in_recovery is False

    def replica(self, name: str) -> Endpoint:
        return next(endpoint for endpoint, _ in self.replicas if endpoint.name == name)


def _survey(cluster: Cluster) -> _Survey:
    endpoints = list(Endpoint.objects.filter(cluster=cluster).select_related("cluster", "upstream"))
    primary = next((e for e in endpoints if e.role == Role.PRIMARY and e.enabled), None)
    replicas = [e for e in endpoints if e.role == Role.REPLICA]
    probed = [e for e in endpoints if e.enabled and e.state != State.FENCED]
    if primary is not None and primary not in probed:
        probed.append(primary)
    results = {endpoint.pk: result for endpoint, result in check_endpoints(probed)}
    return _Survey(
        cluster=cluster,
        primary=primary,
        primary_result=results.get(primary.pk) if primary is not None else None,
        replicas=tuple((replica, results.get(replica.pk)) for replica in replicas),
    )


def _streaming(survey: _Survey) -> dict[int, Streaming]:
    """Each replica's evidence of streaming from the survey's primary, by primary key.

    Live (the primary's walsenders, from the survey's probe) when the primary answers as
    a primary; else what the last sweep in which it did recorded (``Endpoint.upstream``).
    """
    replicas = [endpoint for endpoint, _ in survey.replicas]
    primary, live = survey.primary, survey.primary_result
    if survey.primary_writable and live is not None:
        resolutions = upstream.RESOLVER.resolve_all(
            (replica.host for replica in replicas), timeout_s=RESOLVE_WAIT_S
        )
        return {
            replica.pk: streaming_from_primary(
                replica.name, resolutions[replica.host], live.walsenders
            )
            for replica in replicas
        }
    now = timezone.now()
    last_sweep_at = max(
        (r.upstream_observed_at for r in replicas if r.upstream_observed_at is not None),
        default=None,
    )
    return {
        replica.pk: recorded_streaming(
            primary=primary.name if primary is not None else None,
            primary_pk=primary.pk if primary is not None else None,
            upstream_pk=replica.upstream_id,
            upstream_name=replica.upstream.name if replica.upstream is not None else "",
            observed_at=replica.upstream_observed_at,
            last_sweep_at=last_sweep_at,
            now=now,
        )
        for replica in replicas
    }


def _candidate_state(
    endpoint: Endpoint, result: ProbeResult | None, streaming: Streaming
) -> CandidateState:
    answered = result is not None and result.ok
    return CandidateState(
        name=endpoint.name,
        enabled=endpoint.enabled,
        answered=answered,
        in_recovery=result.in_recovery if result is not None else None,
        fenced=endpoint.state == State.FENCED,
        wal_lsn=result.wal_lsn if answered and result is not None else None,
        received_lsn=result.received_lsn if answered and result is not None else None,
        # Only live measurements: a sweep's lag from before the crash may be stale either way.
        lag_bytes=None,
        promotion_priority=endpoint.promotion_priority,
        weight=endpoint.weight,
        streaming=streaming,
        error=result.error if result is not None else "",
    )


def _plan(survey: _Survey, to: str | None) -> FailoverPlan:
    primary_positions = []
    if survey.primary is not None and survey.primary.wal_lsn is not None:
        primary_positions.append(survey.primary.wal_lsn)
    live = survey.primary_result
    if survey.primary_writable and live is not None and live.wal_lsn is not None:
        primary_positions.append(live.wal_lsn)
    streaming = _streaming(survey)
    plan = choose_failover_candidate(
        [
            _candidate_state(endpoint, result, streaming[endpoint.pk])
            for endpoint, result in survey.replicas
        ],
        survey.cluster.max_failover_lag_bytes,
        to=to,
        primary_lsn=max(primary_positions, default=None),
    )
    return replace(
        plan,
        primary=survey.primary.name if survey.primary is not None else None,
        primary_answers=survey.primary_writable if survey.primary is not None else None,
    )


def _check_target(cluster: Cluster, to: str | None) -> None:
    if to is None:
        return
    endpoint = Endpoint.objects.filter(cluster=cluster, name=to).first()
    if endpoint is None:
        names = ", ".join(cluster.endpoints.order_by("name").values_list("name", flat=True))
        raise UnknownEndpoint(f"cluster {cluster.name!r} has no endpoint {to!r} (it has: {names})")
    if endpoint.role == Role.PRIMARY and endpoint.enabled:
        raise UnknownEndpoint(
            f"{to!r} is already the primary of cluster {cluster.name!r}; name a replica"
        )


def plan_failover(cluster: Cluster, *, to: str | None = None) -> FailoverPlan:
    """Probe the cluster now and say what a failover would do (changes nothing)."""
    _check_target(cluster, to)
    return _plan(_survey(cluster), to)


def describe_plan(plan: FailoverPlan) -> str:
    """The plan in a few lines, for the command, the admin and the event's steps."""
    lines = []
    if plan.primary is None:
        lines.append("primary: none registered")
    else:
        status = "answers as a primary" if plan.primary_answers else "does not answer as a primary"
        lines.append(f"primary: {plan.primary} ({status})")
    if plan.reference_lsn is not None:
        lines.append(f"most advanced known WAL position: {format_lsn(plan.reference_lsn)}")
    if plan.candidate is not None:
        lines.append(f"candidate: {plan.candidate} (lag {plan.candidate_lag_bytes} bytes)")
    lines.append(f"why: {plan.reason}")
    if plan.ranking:
        lines.append(f"eligible, best first: {', '.join(plan.ranking)}")
    lines.extend(f"not eligible: {name}: {why}" for name, why in plan.excluded.items())
    return "\n".join(lines)


# The lock


def lock_key(cluster_pk: int) -> str:
    return f"pgwarden:failover:{cluster_pk}"


class _ClusterLock:
    """The cluster's failover lock in Redis: one failover or switchover at a time, everywhere."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        client = redis.Redis.from_url(
            settings.REDIS_URL,
            socket_timeout=REDIS_TIMEOUT_S,
            socket_connect_timeout=REDIS_TIMEOUT_S,
        )
        self._lock = client.lock(lock_key(cluster.pk), timeout=LOCK_TTL_S, blocking=False)

    def __enter__(self) -> _ClusterLock:
        try:
            acquired = self._lock.acquire()
        except redis.RedisError as exc:
            raise FailoverError(
                f"cannot take the failover lock of cluster {self.cluster.name!r} in Redis "
                f"({exc}); refusing to fail over without it, since two workers could then "
                "promote two replicas. Bring Redis back and retry."
            ) from None
        if not acquired:
            raise FailoverInProgress(
                f"a failover or switchover of cluster {self.cluster.name!r} is already running "
                f"(lock {lock_key(self.cluster.pk)} is held); see its latest failover event"
            )
        return self

    def renew(self) -> None:
        """Restart the TTL; a lock lost meanwhile (expired, taken) stops the procedure."""
        try:
            self._lock.reacquire()
        except (redis.exceptions.LockError, redis.RedisError) as exc:
            raise FailoverError(
                f"lost the failover lock of cluster {self.cluster.name!r} ({exc}); stopped "
                "so that no other worker's failover interleaves with this one"
            ) from None

    def __exit__(self, *exc_info: object) -> None:
        with contextlib.suppress(redis.exceptions.LockError, redis.RedisError):
            self._lock.release()


# The audit trail


class _Audit:
    """Appends steps to the event, saving after each so the trail survives a crash."""

    def __init__(self, event: FailoverEvent, lock: _ClusterLock) -> None:
        self.event = event
        self.lock = lock

    def step(self, step: str, ok: bool, detail: str) -> None:
        entry = {"at": timezone.now().isoformat(), "step": step, "ok": ok, "detail": redact(detail)}
        self.event.steps = [*self.event.steps, entry]
        self.event.save(update_fields=["steps"])
        (logger.info if ok else logger.error)("%s: %s: %s", self.event.cluster.name, step, detail)
        self.lock.renew()

    def finish(self, outcome: str, message: str, *, severity: str) -> FailoverEvent:
        event = self.event
        event.outcome = outcome
        event.finished_at = timezone.now()
        if outcome != FailoverEvent.Outcome.SUCCEEDED:
            event.reason = redact(
                f"{event.reason}. {event.get_outcome_display().capitalize()}: {message}"
            )
        event.save(update_fields=["outcome", "finished_at", "reason"])
        notify_event(
            event.cluster,
            Alert.Kind.FAILOVER,
            severity,
            redact(f"{_procedure(event)} of {event.cluster.name} {outcome}: {message}"),
            endpoint=event.new_primary or event.old_primary,
        )
        return event


def _start_event(survey: _Survey, kind: str, reason: str, lock: _ClusterLock) -> _Audit:
    old = survey.primary
    event = FailoverEvent.objects.create(
        cluster=survey.cluster,
        kind=kind,
        old_primary=old,
        old_primary_name=old.name if old is not None else "",
        reason=redact(reason),
        started_at=timezone.now(),
    )
    notify_event(
        survey.cluster,
        Alert.Kind.FAILOVER,
        Alert.Severity.WARNING,
        redact(f"{_procedure(event)} of {survey.cluster.name} started: {reason}"),
        endpoint=old,
    )
    return _Audit(event, lock)


# Talking to servers


def _connect(endpoint: Endpoint, *, statement_timeout_s: float = 30.0) -> psycopg.Connection[Any]:
    try:
        kwargs = endpoint.connection_info().connect_kwargs()
    except DecryptionError as exc:
        raise FailoverError(f"{endpoint}: {exc}") from None
    kwargs["options"] = f"-c statement_timeout={int(statement_timeout_s * 1000)}"
    kwargs["application_name"] = APPLICATION_NAME
    try:
        return psycopg.connect(**kwargs, autocommit=True)
    except psycopg.Error as exc:
        raise FailoverError(f"cannot connect to {endpoint}: {_error_text(exc)}") from None


def _error_text(exc: BaseException, *secrets: str) -> str:
    message = " ".join(str(exc).split())
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate:
        message += f" (SQLSTATE {sqlstate})"
    return redact(message, *secrets)


def _scalar(conn: psycopg.Connection[Any], query: LiteralString, params: Sequence[Any] = ()) -> Any:
    row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


@contextlib.contextmanager
def _session(
    endpoint: Endpoint, what: str, *secrets: str, statement_timeout_s: float = 30.0
) -> Iterator[psycopg.Connection[Any]]:
    """A connection whose SQL errors become FailoverErrors saying what was being done where."""
    with _connect(endpoint, statement_timeout_s=statement_timeout_s) as conn:
        try:
            yield conn
        except psycopg.Error as exc:
            raise FailoverError(
                f"{what} on {endpoint} failed: {_error_text(exc, *secrets)}"
            ) from None


def refuse_writes(endpoint: Endpoint) -> int:
    """Make ``endpoint`` refuse new writes and end its client sessions; returns how many.

    ``default_transaction_read_only = on`` through ``ALTER SYSTEM``, so it survives a
    restart, and a reload; once new sessions see it, every other client backend is
    terminated (waiting up to :data:`TERMINATE_WAIT_MS` each), so transactions that
    began before end too. Used on an old primary that came back (split brain) and at the
    start of a switchover.
    """
    with _session(endpoint, "making the server read-only") as conn:
        conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        conn.execute("SELECT pg_reload_conf()")
    # The postmaster applies the reload asynchronously: a session forked before it did could
    # still write, so the sessions are ended only once new ones are read-only.
    deadline = time.monotonic() + READ_ONLY_WAIT_S
    while True:
        with _session(endpoint, "checking the read-only setting") as conn:
            if _scalar(conn, "SELECT current_setting('default_transaction_read_only')") == "on":
                terminated = _scalar(
                    conn,
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, %s))::int "
                    "FROM pg_stat_activity "
                    "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
                    (TERMINATE_WAIT_MS,),
                )
                return int(terminated or 0)
        if time.monotonic() > deadline:
            raise FailoverError(
                f"{endpoint} still lets new sessions write {READ_ONLY_WAIT_S:g} s after "
                "default_transaction_read_only was set and reloaded; check its configuration "
                "(a per-database or per-role setting overrides it)"
            )
        time.sleep(0.05)


def allow_writes(endpoint: Endpoint) -> None:
    """Undo :func:`refuse_writes` (``ALTER SYSTEM RESET``, reload): for an aborted switchover."""
    with _session(endpoint, "making the server writable again") as conn:
        conn.execute("ALTER SYSTEM RESET default_transaction_read_only")
        conn.execute("SELECT pg_reload_conf()")


def _promote(candidate: Endpoint, audit: _Audit) -> None:
    """Promote ``candidate`` and verify it left recovery; FailoverError if either fails."""
    started = time.monotonic()
    with _session(candidate, "pg_promote()", statement_timeout_s=PROMOTE_WAIT_S + 10) as conn:
        promoted = _scalar(
            conn, "SELECT pg_promote(wait => true, wait_seconds => %s)", (PROMOTE_WAIT_S,)
        )
    if not promoted:
        raise FailoverError(
            f"{candidate} did not finish its promotion within {PROMOTE_WAIT_S} s; check its log"
        )
    audit.step(
        "promote",
        True,
        f"pg_promote() on {candidate.name} ({candidate.host}:{candidate.port}) returned true "
        f"after {(time.monotonic() - started) * 1000:.0f} ms",
    )
    deadline = time.monotonic() + PROMOTION_VERIFY_S
    while True:
        with _session(candidate, "checking the promotion") as conn:
            row = conn.execute(
                "SELECT pg_is_in_recovery(), CASE WHEN NOT pg_is_in_recovery() "
                "THEN (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint END"
            ).fetchone()
        if row is not None and not row[0]:
            audit.step(
                "verify promotion",
                True,
                f"{candidate.name} is out of recovery, writing WAL at {format_lsn(int(row[1]))}",
            )
            return
        if time.monotonic() > deadline:
            raise FailoverError(
                f"{candidate} is still in recovery {PROMOTION_VERIFY_S:g} s after pg_promote() "
                "returned; check its log"
            )
        time.sleep(0.05)


def _still_in_recovery(endpoint: Endpoint) -> bool:
    """True only if ``endpoint`` answers and is certainly still a replica."""
    try:
        with _connect(endpoint) as conn:
            return bool(_scalar(conn, "SELECT pg_is_in_recovery()"))
    except (FailoverError, psycopg.Error):
        return False


# The registry


def _record_new_primary(cluster: Cluster, new: Endpoint, fenced_reason: str) -> list[str]:
    """Fence every other registered primary and make ``new`` the primary, atomically."""
    now = timezone.now()
    with transaction.atomic():
        # Demoted first: the one-enabled-primary constraint is checked row by row.
        others = Endpoint.objects.filter(cluster=cluster, role=Role.PRIMARY).exclude(pk=new.pk)
        demoted = list(others.values_list("name", flat=True))
        others.update(
            role=Role.REPLICA, state=State.FENCED, fenced_reason=fenced_reason, updated_at=now
        )
        Endpoint.objects.filter(pk=new.pk).update(
            role=Role.PRIMARY,
            state=State.HEALTHY,
            in_recovery=False,
            role_mismatch=False,
            fenced_reason="",
            replication_lag_bytes=None,
            replication_lag_s=None,
            consecutive_failures=0,
            last_error="",
            # A primary streams from nothing; as a replica again, sweeps will say from what.
            upstream=None,
            upstream_observed_at=None,
            updated_at=now,
        )
        # .update() sends no signals: announce the change ourselves, once it is committed.
        transaction.on_commit(topology.notify_changed)
    new.refresh_from_db()
    return demoted


def _fence(endpoint: Endpoint, reason: str) -> None:
    with transaction.atomic():
        Endpoint.objects.filter(pk=endpoint.pk).update(
            state=State.FENCED, fenced_reason=reason, updated_at=timezone.now()
        )
        transaction.on_commit(topology.notify_changed)


# Re-pointing replicas


@dataclass(frozen=True)
class _Repointed:
    replica: Endpoint
    slot: str


def _repoint(replica: Endpoint, new_primary: Endpoint) -> _Repointed:
    """Create the replica's slot on the new primary, then rewrite host and port of its conninfo."""
    with _session(replica, "reading primary_conninfo") as conn:
        current = str(_scalar(conn, "SHOW primary_conninfo") or "")
        slot = str(_scalar(conn, "SHOW primary_slot_name") or "")
    if not current:
        raise FailoverError(
            f"{replica} has no primary_conninfo (it does not stream; archive only?): "
            "configure it by hand or rebuild it from the new primary"
        )
    try:
        params = conninfo_to_dict(current)
    except psycopg.ProgrammingError as exc:
        raise FailoverError(f"{replica}: its primary_conninfo does not parse ({exc})") from None
    secret = str(params.get("password") or "")
    # The replication password is not one pgwarden decrypted: make the log filter know it too.
    remember(secret)
    # hostaddr, if set, would win over host and keep pointing at the old primary.
    params.pop("hostaddr", None)
    params.update(host=new_primary.host, port=str(new_primary.port))
    if slot:
        with _session(new_primary, f"creating replication slot {slot!r}") as conn:
            conn.execute(
                "SELECT pg_create_physical_replication_slot(%s, true) "
                "WHERE NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = %s)",
                (slot, slot),
            )
    with _session(replica, "re-pointing primary_conninfo", secret) as conn:
        conn.execute(
            sql.SQL("ALTER SYSTEM SET primary_conninfo = {}").format(
                sql.Literal(make_conninfo("", **params))
            )
        )
        conn.execute("SELECT pg_reload_conf()")
    return _Repointed(replica, slot)


def _streams_from(replica: Endpoint, primary: Endpoint) -> tuple[bool, str]:
    with _session(replica, "reading pg_stat_wal_receiver") as conn:
        row = conn.execute(
            "SELECT status, sender_host, sender_port FROM pg_stat_wal_receiver"
        ).fetchone()
    if row is None:
        return False, "no WAL receiver running"
    status, host, port = row
    if status == "streaming" and host == primary.host and port == primary.port:
        return True, f"streaming from {host}:{port}"
    return False, f"WAL receiver {status or 'unknown'}, from {host}:{port}"


def _repoint_replicas(survey: _Survey, new_primary: Endpoint, audit: _Audit) -> list[str]:
    """Re-point every other enabled replica and wait until each streams; the problems found."""
    problems: list[str] = []
    repointed: list[_Repointed] = []
    for replica, result in survey.replicas:
        if replica.pk == new_primary.pk:
            continue
        step = f"re-point {replica.name}"
        if not replica.enabled or replica.state == State.FENCED:
            why = "disabled" if not replica.enabled else "fenced"
            audit.step(step, True, f"skipped: {why}; rebuild it from {new_primary.name} later")
            continue
        if result is None or not result.ok or not result.in_recovery:
            why = "not in recovery" if result is not None and result.ok else "did not answer"
            problem = f"{replica.name} {why}: rebuild it as a replica of {new_primary.name}"
            audit.step(step, False, problem)
            problems.append(problem)
            continue
        try:
            done = _repoint(replica, new_primary)
        except FailoverError as exc:
            audit.step(step, False, str(exc))
            problems.append(str(exc))
            continue
        slot = f", slot {done.slot!r} created there" if done.slot else ""
        audit.step(step, True, f"primary_conninfo -> {new_primary.host}:{new_primary.port}{slot}")
        repointed.append(done)

    deadline = time.monotonic() + STREAM_WAIT_S
    for done in repointed:
        step = f"verify {done.replica.name} streams"
        seen = ""
        while True:
            try:
                ok, seen = _streams_from(done.replica, new_primary)
            except FailoverError as exc:
                ok, seen = False, str(exc)
            if ok:
                audit.step(step, True, f"{done.replica.name} {seen}")
                break
            if time.monotonic() > deadline:
                problem = (
                    f"{done.replica.name} does not stream from {new_primary.name} after "
                    f"{STREAM_WAIT_S:g} s ({seen}); check its log, or rebuild it"
                )
                audit.step(step, False, problem)
                problems.append(problem)
                break
            time.sleep(0.1)
    return problems


# The procedures


def _procedure(event: FailoverEvent) -> str:
    """ "automatic failover", "manual failover" or "switchover"."""
    if event.kind == FailoverEvent.Kind.SWITCHOVER:
        return "switchover"
    return f"{event.get_kind_display()} failover"


def _event_label(event: FailoverEvent) -> str:
    return f"{_procedure(event)} #{event.pk}"


def _fenced_reason(event: FailoverEvent, new_primary: Endpoint) -> str:
    return (
        f"former primary, fenced by {_event_label(event)} at {event.started_at:%Y-%m-%d %H:%M:%S} "
        f"when {new_primary.name} was promoted: rebuild it as a replica of {new_primary.name}, "
        "then re-admit it"
    )


def _promote_and_switch(survey: _Survey, candidate: Endpoint, audit: _Audit) -> FailoverEvent:
    """Steps 4-7, shared by failover and switchover."""
    event = audit.event
    try:
        _promote(candidate, audit)
    except FailoverError as exc:
        message = str(exc)
        if not _still_in_recovery(candidate):
            # It may finish promoting later: a possible second primary gets no traffic.
            _fence(candidate, f"its promotion by {_event_label(event)} did not complete: {message}")
            message += f"; {candidate.name} is fenced, as it may still become a primary"
        audit.step("promote", False, message)
        return audit.finish(FailoverEvent.Outcome.FAILED, message, severity=Alert.Severity.CRITICAL)

    demoted = _record_new_primary(survey.cluster, candidate, _fenced_reason(event, candidate))
    event.new_primary = candidate
    event.new_primary_name = candidate.name
    event.save(update_fields=["new_primary", "new_primary_name"])
    fenced = f"; fenced {', '.join(demoted)}" if demoted else ""
    audit.step("registry", True, f"{candidate.name} is the primary{fenced}; routers notified")

    problems = _repoint_replicas(survey, candidate, audit)
    old = survey.primary.name if survey.primary is not None else "none"
    message = f"{old} -> {candidate.name}"
    if problems:
        message += f"; needs attention: {'; '.join(problems)}"
    severity = (
        Alert.Severity.CRITICAL
        if problems
        else Alert.Severity.WARNING
        if event.kind == FailoverEvent.Kind.AUTOMATIC
        else Alert.Severity.INFO
    )
    return audit.finish(FailoverEvent.Outcome.SUCCEEDED, message, severity=severity)


def _recorded(audit: _Audit, steps: Callable[[], FailoverEvent]) -> FailoverEvent:
    """Run ``steps``; if they raise (a lost lock, the control database), the event says so."""
    try:
        return steps()
    except Exception as exc:
        if audit.event.outcome == FailoverEvent.Outcome.IN_PROGRESS:
            with contextlib.suppress(Exception):  # the original error matters more
                audit.finish(
                    FailoverEvent.Outcome.FAILED,
                    f"stopped by an unexpected error: {_error_text(exc)}",
                    severity=Alert.Severity.CRITICAL,
                )
        raise


def _fail_over_locked(
    survey: _Survey, lock: _ClusterLock, *, to: str | None, kind: str, reason: str
) -> FailoverEvent:
    audit = _start_event(survey, kind, reason, lock)
    return _recorded(audit, lambda: _fail_over_steps(survey, audit, to))


def _fail_over_steps(survey: _Survey, audit: _Audit, to: str | None) -> FailoverEvent:
    plan = _plan(survey, to)
    audit.step("plan", plan.candidate is not None, describe_plan(plan))
    if plan.candidate is None:
        return audit.finish(
            FailoverEvent.Outcome.ABORTED,
            f"nothing promoted: {plan.reason}",
            severity=Alert.Severity.CRITICAL,
        )
    candidate = survey.replica(plan.candidate)
    if survey.primary is not None and survey.primary_writable:
        try:
            ended = refuse_writes(survey.primary)
        except FailoverError as exc:
            audit.step("fence old primary", False, str(exc))
            return audit.finish(
                FailoverEvent.Outcome.ABORTED,
                f"the old primary still answers and could not be made read-only ({exc}); "
                "stop it, or use a switchover",
                severity=Alert.Severity.CRITICAL,
            )
        audit.step(
            "fence old primary",
            True,
            f"{survey.primary.name} still answered: now read-only, {ended} client sessions ended",
        )
    return _promote_and_switch(survey, candidate, audit)


def fail_over(
    cluster: Cluster,
    *,
    to: str | None = None,
    kind: str = FailoverEvent.Kind.MANUAL,
    reason: str,
) -> FailoverEvent:
    """Promote ``to`` (or the best replica) now; returns the event, whatever its outcome.

    Raises :class:`FailoverInProgress` if another failover of the cluster runs,
    :class:`UnknownEndpoint` for a bad ``to``, :class:`FailoverError` without Redis.
    A live old primary is made read-only first; use :func:`switchover` to lose nothing.
    """
    if kind not in (FailoverEvent.Kind.AUTOMATIC, FailoverEvent.Kind.MANUAL):
        raise ValueError(f"kind must be automatic or manual, not {kind!r} (see switchover())")
    _check_target(cluster, to)
    with _ClusterLock(cluster) as lock:
        return _fail_over_locked(_survey(cluster), lock, to=to, kind=kind, reason=reason)


# After an aborted automatic failover, wait this long before trying again: the sweep
# calls every second while the primary stays down, and each abort records an event and
# sends alerts. Long enough to avoid a storm, short enough to promote a replica that
# catches up (or that an operator re-enables) soon after.
ABORTED_RETRY_S = 30.0


def _recently_aborted(cluster: Cluster) -> bool:
    last = cluster.failover_events.order_by("-started_at").first()
    return (
        last is not None
        and last.outcome == FailoverEvent.Outcome.ABORTED
        and last.kind == FailoverEvent.Kind.AUTOMATIC
        and (timezone.now() - last.started_at).total_seconds() < ABORTED_RETRY_S
    )


def on_primary_down(cluster: Cluster) -> FailoverEvent | None:
    """The health sweep saw the primary fail ``failure_threshold`` probes: fail over if so.

    Under the lock, re-reads the registry and probes the primary once more (with the
    replicas, concurrently). ``None`` when automatic failover is off, the primary answers,
    no primary is registered, or another worker is already failing over: so workers that
    race here, or arrive just after a failover, never cause a second one.
    """
    try:
        with _ClusterLock(cluster) as lock:
            cluster = Cluster.objects.get(pk=cluster.pk)
            if not cluster.auto_failover or _recently_aborted(cluster):
                return None
            survey = _survey(cluster)
            if survey.primary is None or survey.primary_result is None:
                return None
            if survey.primary_result.ok:
                return None
            primary, error = survey.primary, survey.primary_result.error
            reason = (
                f"primary {primary.name} ({primary.host}:{primary.port}) is down: "
                f"{primary.consecutive_failures} consecutive failed probes (threshold "
                f"{cluster.failure_threshold}), and a re-probe failed: {error}"
            )
            return _fail_over_locked(
                survey, lock, to=None, kind=FailoverEvent.Kind.AUTOMATIC, reason=reason
            )
    except FailoverInProgress:
        return None


def switchover(
    cluster: Cluster,
    *,
    to: str | None = None,
    timeout_s: float = 30.0,
    reason: str = "planned switchover",
) -> FailoverEvent:
    """Hand the primary role to ``to`` (or the best replica) without losing a committed write.

    Raises :class:`PrimaryUnavailable` when the primary is not healthy (use
    :func:`fail_over`), and what :func:`fail_over` raises.
    """
    _check_target(cluster, to)
    with _ClusterLock(cluster) as lock:
        survey = _survey(cluster)
        old = survey.primary
        if old is None:
            raise PrimaryUnavailable(
                f"cluster {cluster.name!r} has no enabled primary to switch over from; use failover"
            )
        if not survey.primary_writable:
            result = survey.primary_result
            why = result.error if result is not None and not result.ok else "is in recovery"
            raise PrimaryUnavailable(
                f"the primary {old} does not answer as a primary ({why}): a switchover needs a "
                "healthy primary; use failover instead"
            )
        audit = _start_event(survey, FailoverEvent.Kind.SWITCHOVER, reason, lock)
        return _recorded(audit, lambda: _switchover_steps(survey, old, audit, to, timeout_s))


def _switchover_steps(
    survey: _Survey, old: Endpoint, audit: _Audit, to: str | None, timeout_s: float
) -> FailoverEvent:
    plan = _plan(survey, to)
    audit.step("plan", plan.candidate is not None, describe_plan(plan))
    if plan.candidate is None:
        return audit.finish(
            FailoverEvent.Outcome.ABORTED,
            f"nothing promoted: {plan.reason}",
            severity=Alert.Severity.CRITICAL,
        )
    candidate = survey.replica(plan.candidate)
    try:
        ended = refuse_writes(old)
    except FailoverError as exc:
        audit.step("stop writes on the old primary", False, str(exc))
        _undo_read_only(old, audit)
        return audit.finish(
            FailoverEvent.Outcome.ABORTED, str(exc), severity=Alert.Severity.CRITICAL
        )
    audit.step(
        "stop writes on the old primary",
        True,
        f"{old.name} is read-only, {ended} client sessions ended",
    )
    try:
        final_lsn = _final_position(old)
        audit.step("final position", True, f"{old.name} wrote WAL up to {format_lsn(final_lsn)}")
        _wait_for_replay(candidate, final_lsn, timeout_s)
    except FailoverError as exc:
        audit.step("catch up", False, str(exc))
        _undo_read_only(old, audit)
        return audit.finish(
            FailoverEvent.Outcome.ABORTED,
            f"{exc}; {old.name} is writable again, nothing changed",
            severity=Alert.Severity.CRITICAL,
        )
    audit.step("catch up", True, f"{candidate.name} replayed up to {format_lsn(final_lsn)}")
    event = _promote_and_switch(survey, candidate, audit)
    if event.outcome == FailoverEvent.Outcome.FAILED and _still_in_recovery(candidate):
        # Nothing changed after all: the old primary may take writes again.
        _undo_read_only(old, audit)
    return event


def _final_position(endpoint: Endpoint) -> int:
    with _session(endpoint, "reading the final WAL position") as conn:
        return int(_scalar(conn, "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint"))


def _wait_for_replay(replica: Endpoint, target_lsn: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    replayed: int | None = None
    with _session(replica, "waiting for replay") as conn:
        while True:
            replayed = _scalar(conn, "SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint")
            if replayed is not None and replayed >= target_lsn:
                return
            if time.monotonic() > deadline:
                at = format_lsn(replayed) if replayed is not None else "nothing"
                raise FailoverError(
                    f"{replica.name} replayed {at} of the old primary's {format_lsn(target_lsn)} "
                    f"within {timeout_s:g} s; is it streaming? (pg_stat_replication)"
                )
            time.sleep(0.02)


def _undo_read_only(endpoint: Endpoint, audit: _Audit) -> None:
    try:
        allow_writes(endpoint)
    except FailoverError as exc:
        audit.step("undo read-only", False, f"{exc}; run ALTER SYSTEM RESET by hand")
    else:
        audit.step("undo read-only", True, f"{endpoint.name} accepts writes again")


def readmit(endpoint: Endpoint) -> None:
    """Clear the fence of an endpoint rebuilt as a replica: it must answer, in recovery."""
    from endpoints.health.probe import check_endpoint

    result = check_endpoint(endpoint)
    if not result.ok:
        raise NotReadmittable(
            f"{endpoint} does not answer ({result.error}); start it as a replica first"
        )
    if not result.in_recovery:
        raise NotReadmittable(
            f"{endpoint} is not in recovery: it would accept writes beside the primary. "
            "Rebuild it as a replica of the current primary first (local cluster: "
            f"`manage.py local_cluster rebuild {endpoint.name}`)"
        )
    with transaction.atomic():
        Endpoint.objects.filter(pk=endpoint.pk).update(
            state=State.UNKNOWN,
            fenced_reason="",
            in_recovery=True,
            role_mismatch=False,
            consecutive_failures=0,
            updated_at=timezone.now(),
        )
        transaction.on_commit(topology.notify_changed)
    endpoint.refresh_from_db()
    logger.info("re-admitted %s", endpoint)
