"""Sweeps: probe every enabled endpoint of a cluster at once, record, alert, react.

A sweep (:func:`sweep`)

1. probes every enabled endpoint concurrently, the whole sweep bounded by the
   cluster's ``probe_timeout_s``, so a hung endpoint costs one probe timeout and
   delays no other. Connection set-ups take turns so that CPU is spent on some
   of them finishing in time rather than all of them finishing late
   (:func:`endpoints.health.probe.sweep_endpoints`, in :func:`probe_order`); endpoints
   the machine had no time for are left as they were and go first next sweep.
   Probes that overran the deadline because this process was starved of CPU are
   recorded, but their failures not counted (:func:`sweep_was_starved`);
2. stores one HealthCheck row per endpoint (with its health score) and updates
   each Endpoint's observed fields: recovery, WAL position, latency, lag in
   seconds and in bytes behind the primary's WAL position from the same sweep,
   consecutive failures, role mismatch, health score and state (the rules and
   the score formula are in :mod:`endpoints.core.scoring`). When the registered
   primary answered as a primary, every replica endpoint also gets ``upstream``
   (that primary if its ``pg_stat_replication`` shows the replica streaming, by
   name and address: :func:`endpoints.health.upstream.streaming_from_primary`; else
   NULL) and ``upstream_observed_at``; when it did not, both stay as the last
   sweep in which it answered left them, which is what automatic failover
   relies on (only a replica observed streaming from the primary is promoted);
3. bumps the topology version when something routing depends on changed (see
   :func:`routing_relevant_change`): every process reloads its snapshot on a
   bump, so a sweep that saw only latency jitter must not cost each of them a
   reload every second. Snapshots are reloaded every 30 s in any case
   (``topology.MAX_SNAPSHOT_AGE_S``), which bounds how stale the probe latency
   seen by the ``nearest`` and ``response_time`` strategies can get;
4. evaluates the alert conditions (:func:`endpoints.alerts.evaluate`);
5. reacts: a fenced endpoint that answers as a writable primary (split brain) is
   made to refuse writes when the cluster allows it, and a primary down for
   ``failure_threshold`` consecutive probes hands over to automatic failover.

Scheduling (:func:`sweep_exclusively`, :func:`claim_due_sweeps`): Celery beat
runs a dispatcher every second, which claims in Redis, per cluster, the right to
dispatch its next sweep once ``check_interval_s`` has elapsed (so restarting
beat, or several dispatchers, never doubles a sweep); each sweep holds a Redis
lock per cluster, so sweeps of one cluster never overlap whatever the number of
workers and machines, and a sweep that finds the lock taken is skipped, not
queued. The retention task (:func:`prune_health_checks`) deletes old
HealthCheck rows in batches.

Cost: each probe opens a fresh connection, which takes about 3 ms of the
sweeping process's CPU (libpq's SCRAM key derivation, mostly), all on the one
thread that runs the probes' event loop: a sweep of 500 endpoints costs about
1.5 CPU-seconds there, so past a few hundred endpoints per cluster raise
``check_interval_s`` or split the cluster. ``make bench`` shows what happens
when the machine runs out of CPU before the probe timeout: the sweep still ends
on time, with some endpoints left for the next one (logged).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis
from django.conf import settings
from django.db import transaction
from django.db.models import Case, F, Value, When
from django.utils import timezone
from redis.lock import Lock

from endpoints import alerts
from endpoints.core import scoring
from endpoints.health import upstream
from endpoints.health.probe import ProbeResult, WalSender, sweep_endpoints
from endpoints.health.upstream import Resolution, Streaming, streaming_from_primary
from endpoints.models import Cluster, Endpoint, HealthCheck, Role, State
from endpoints.routing import topology

logger = logging.getLogger("pgwarden.health")

SWEEP_LOCK_KEY = "pgwarden:sweep:{cluster_id}"
DISPATCH_KEY = "pgwarden:sweep:dispatched:{cluster_id}"
# Beat runs the dispatcher once a second: intervals are honoured to that tick.
DISPATCH_TICK_S = 1.0
# A dispatcher tick that runs a little early must still find the previous claim expired.
DISPATCH_SLACK_S = 0.2
# The sweep lock outlives a normal sweep (probes take at most one probe timeout, the
# writes a fraction of a second) and frees the cluster soon after a worker dies mid-sweep.
SWEEP_LOCK_PROBE_TIMEOUTS = 3
SWEEP_LOCK_MARGIN_S = 2.0
# Reacting (promoting a replica, fencing) takes longer than a sweep; the lock is extended
# so that no sweep observes a failover half done.
REACT_LOCK_TTL_S = 60.0
# A change of health score this large reaches the routers (health_based balancing).
SCORE_CHANGE_TO_PUBLISH = 10
PRUNE_BATCH_SIZE = 10_000
# Probes that overrun the probe timeout by more than this were starved (sweep_was_starved).
STARVED_OVERRUN_MIN_S = 0.5
STARVED_OVERRUN_SHARE = 0.25
REDIS_TIMEOUT_S = 2.0
# How long a sweep waits for DNS to resolve replica hosts not in the cache (IP addresses
# need none); a host still unresolved then counts as not seen streaming this sweep.
RESOLVE_WAIT_S = 0.5


@dataclass(frozen=True)
class Observation:
    """One endpoint in one sweep: the probe and what was derived from it.

    ``endpoint`` is the row as loaded before the sweep, so its observed fields are
    the previous sweep's.
    """

    endpoint: Endpoint
    result: ProbeResult
    lag_bytes: int | None
    state: str = State.UNKNOWN
    score: int = 0
    consecutive_failures: int = 0
    role_mismatch: bool = False

    @property
    def available(self) -> bool:
        """Answering and allowed to take traffic."""
        return self.result.ok and self.state != State.FENCED

    @property
    def writable_while_fenced(self) -> bool:
        """Split brain: fenced, yet answering as a primary (not in recovery)."""
        return self.state == State.FENCED and self.result.ok and self.result.in_recovery is False


@dataclass(frozen=True)
class SweepReport:
    """What a scheduled sweep did, as the Celery task returns it."""

    cluster_id: int
    swept: bool
    endpoints: int = 0
    available: int = 0
    elapsed_s: float = 0.0
    skipped_because: str = ""


@dataclass(frozen=True)
class PruneReport:
    deleted: int
    batches: int


# Pure parts


def replication_lag_bytes(primary_lsn: int | None, result: ProbeResult) -> int | None:
    """How far a replica's replayed position is behind the primary's, never negative."""
    if primary_lsn is None or not result.ok or not result.in_recovery or result.wal_lsn is None:
        return None
    return max(0, primary_lsn - result.wal_lsn)


def next_state(current: str, *, ok: bool, consecutive_failures: int, threshold: int) -> str:
    """State after a probe, availability only (see :func:`endpoints.core.scoring.next_state`)."""
    return scoring.next_state(
        current, ok=ok, consecutive_failures=consecutive_failures, threshold=threshold
    )


def observe(
    cluster: Cluster,
    endpoint: Endpoint,
    result: ProbeResult,
    primary_lsn: int | None,
    *,
    count_failure: bool = True,
) -> Observation:
    """Derive state, score, failures and role mismatch from one probe of ``endpoint``.

    ``count_failure=False`` (a starved sweep, see :func:`sweep_was_starved`): a failed
    probe leaves the failure count, and so the state, as they were.
    """
    counted = 1 if count_failure else 0
    failures = 0 if result.ok else endpoint.consecutive_failures + counted
    lag_s = result.replay_lag_s if endpoint.role == Role.REPLICA else None
    return Observation(
        endpoint=endpoint,
        result=result,
        lag_bytes=replication_lag_bytes(primary_lsn, result),
        state=scoring.next_state(
            endpoint.state,
            ok=result.ok,
            consecutive_failures=failures,
            threshold=cluster.failure_threshold,
            latency_ms=result.latency_ms,
            degraded_latency_ms=cluster.degraded_latency_ms,
            lag_s=lag_s,
            max_lag_s=cluster.max_replica_lag_s,
        ),
        score=scoring.health_score(
            ok=result.ok,
            latency_ms=result.latency_ms,
            degraded_latency_ms=cluster.degraded_latency_ms,
            lag_s=lag_s,
            max_lag_s=cluster.max_replica_lag_s,
            connections_in_use=result.connections_in_use,
            max_connections=result.max_connections,
        ),
        consecutive_failures=failures,
        # Unknown while it does not answer: keep what the last answer showed.
        role_mismatch=(
            scoring.role_mismatch(endpoint.role, result.in_recovery)
            if result.ok
            else endpoint.role_mismatch
        ),
    )


def sweep_was_starved(probe_phase_s: float, probe_timeout_s: float) -> bool:
    """Whether the probes overran their own deadline: this process, not the endpoints.

    Every probe is bounded by the probe timeout, so the probe phase can only run
    well past it when the sweeping process could not run its event loop (CPU
    exhausted, a stalled VM). Its failed probes then say nothing about the
    endpoints, and counting them could mark every endpoint down at once (and
    route nowhere) because pgwarden itself was overloaded.
    """
    return probe_phase_s > probe_timeout_s + max(
        STARVED_OVERRUN_MIN_S, STARVED_OVERRUN_SHARE * probe_timeout_s
    )


def routing_relevant_change(observation: Observation, max_lag_s: float | None) -> bool:
    """Whether the routers must reload to see this observation.

    They must when the endpoint's state, recovery or role mismatch changed, when its
    lag crossed the cluster's bound, or when its health score moved by at least
    :data:`SCORE_CHANGE_TO_PUBLISH` points. Latency jitter and lag within the bound
    are left for the next reload.
    """
    before, result = observation.endpoint, observation.result
    if observation.state != before.state and before.state != State.FENCED:
        return True
    if observation.role_mismatch != before.role_mismatch:
        return True
    if result.ok and result.in_recovery != before.in_recovery:
        return True
    lag_s = result.replay_lag_s if result.ok else before.replication_lag_s
    if scoring.lag_over_bound(lag_s, max_lag_s) != scoring.lag_over_bound(
        before.replication_lag_s, max_lag_s
    ):
        return True
    return (
        before.health_score is None
        or abs(observation.score - before.health_score) >= SCORE_CHANGE_TO_PUBLISH
    )


def is_suspect(endpoint: Endpoint) -> bool:
    """Whether the endpoint's last probe failed: probed at once, as it may just hang."""
    return bool(endpoint.last_error) or endpoint.state == State.DOWN


def probe_order(endpoints: Iterable[Endpoint]) -> list[Endpoint]:
    """The order a sweep spends its CPU on: the primary, then the longest unprobed.

    When the machine cannot open every connection within the probe timeout, those
    left out of one sweep come first in the next, so none goes unprobed for long.
    """
    oldest = datetime.min.replace(tzinfo=UTC)
    return sorted(
        endpoints,
        key=lambda e: (e.role != Role.PRIMARY, e.last_checked_at or oldest, e.pk),
    )


def _names(names: list[str], shown: int = 10) -> str:
    if len(names) <= shown:
        return ", ".join(names)
    return f"{', '.join(names[:shown])} and {len(names) - shown} more"


def answering_primary(
    results: Iterable[tuple[Endpoint, ProbeResult]],
) -> tuple[Endpoint, ProbeResult] | None:
    """The registered primary and its probe, if it answered as a primary (not in recovery)."""
    return next(
        (
            (endpoint, result)
            for endpoint, result in results
            if endpoint.role == Role.PRIMARY and result.ok and result.in_recovery is False
        ),
        None,
    )


def primary_lsn_of(results: Iterable[tuple[Endpoint, ProbeResult]]) -> int | None:
    """The registered primary's current WAL position, if it answered as a primary."""
    answering = answering_primary(results)
    return answering[1].wal_lsn if answering is not None else None


def streams_seen(
    walsenders: Iterable[WalSender],
    replicas: Iterable[Endpoint],
    resolutions: Mapping[str, Resolution],
) -> dict[int, Streaming]:
    """Each replica endpoint (by primary key): is it among the primary's ``walsenders``?

    ``resolutions`` maps each replica's host to its addresses (see
    :meth:`endpoints.health.upstream.Resolver.resolve_all`).
    """
    senders = tuple(walsenders)
    return {
        replica.pk: streaming_from_primary(replica.name, resolutions[replica.host], senders)
        for replica in replicas
    }


# The sweep


def sweep(cluster: Cluster) -> list[Observation]:
    """Probe every enabled endpoint of ``cluster`` concurrently, record, alert and react.

    Takes no lock: scheduled sweeps go through :func:`sweep_exclusively`.
    """
    observations = probe_and_record(cluster)
    react(cluster, observations)
    return observations


def probe_and_record(cluster: Cluster) -> list[Observation]:
    """Steps 1-4 of a sweep: probes, HealthCheck rows, Endpoint status, topology, alerts."""
    endpoints = probe_order(cluster.endpoints.filter(enabled=True).select_related("cluster"))
    started = time.monotonic()
    swept = sweep_endpoints(
        endpoints,
        timeout_s=cluster.probe_timeout_s,
        suspects=[endpoint.pk for endpoint in endpoints if is_suspect(endpoint)],
    )
    probe_phase_s = time.monotonic() - started
    results = [(endpoint, result) for endpoint, result in swept if result is not None]
    if len(results) < len(swept):
        unprobed = [endpoint.name for endpoint, result in swept if result is None]
        logger.warning(
            "cluster %s: %d of %d endpoints could not be probed within the %g s probe "
            "timeout (this process or the machine is short of CPU for that many fresh "
            "connections); they go first next sweep: %s",
            cluster,
            len(unprobed),
            len(swept),
            cluster.probe_timeout_s,
            _names(unprobed),
        )
    starved = sweep_was_starved(probe_phase_s, cluster.probe_timeout_s)
    if starved:
        logger.warning(
            "the probes of cluster %s took %.1f s for a %g s probe timeout: this process is "
            "overloaded, so this sweep's failed probes are recorded but not counted "
            "(give the workers more CPU, or sweep fewer endpoints per cluster)",
            cluster,
            probe_phase_s,
            cluster.probe_timeout_s,
        )
    primary_lsn = primary_lsn_of(results)
    observations = [
        observe(cluster, endpoint, result, primary_lsn, count_failure=not starved)
        for endpoint, result in results
    ]
    upstreams = _upstreams(cluster, endpoints, results)
    now = timezone.now()
    with transaction.atomic():
        HealthCheck.objects.bulk_create(_health_check(o, now) for o in observations)
        for observation in observations:
            _record(observation, now, upstreams)
        probed = {observation.endpoint.pk for observation in observations}
        _record_upstreams({pk: up for pk, up in upstreams.items() if pk not in probed}, now)
    if any(routing_relevant_change(o, cluster.max_replica_lag_s) for o in observations):
        topology.notify_changed()
    try:
        alerts.evaluate(cluster, observations)
    except Exception:
        # Alerts must never cost a failover: log and carry on.
        logger.exception("evaluating the alerts of cluster %s failed", cluster.name)
    return observations


def _upstreams(
    cluster: Cluster, endpoints: list[Endpoint], results: list[tuple[Endpoint, ProbeResult]]
) -> dict[int, Endpoint | None]:
    """Each replica endpoint's ``upstream`` to record: the primary if seen streaming, else None.

    Empty (record nothing, keep what was recorded) unless the registered primary answered
    as a primary. Every enabled replica of the sweep gets one, probed or not: the evidence
    is the primary's walsenders, not the replica's own answer.
    """
    answering = answering_primary(results)
    if answering is None:
        return {}
    primary, result = answering
    replicas = [endpoint for endpoint in endpoints if endpoint.role == Role.REPLICA]
    resolutions = upstream.RESOLVER.resolve_all(
        (replica.host for replica in replicas), timeout_s=RESOLVE_WAIT_S
    )
    seen = streams_seen(result.walsenders, replicas, resolutions)
    for replica in replicas:
        _log_stream_lost(cluster, primary, replica, seen[replica.pk])
    return {pk: primary if streaming.observed else None for pk, streaming in seen.items()}


def _log_stream_lost(
    cluster: Cluster, primary: Endpoint, replica: Endpoint, streaming: Streaming
) -> None:
    """Warn when a replica stops being (or is first found not) streaming from the primary."""
    was_seen = replica.upstream_id == primary.pk
    first_look = replica.upstream_observed_at is None
    if streaming.observed or not (was_seen or first_look) or replica.state == State.FENCED:
        return
    logger.warning(
        "cluster %s: replica %s is not seen streaming from primary %s (%s); failover will "
        "not promote it until it is",
        cluster,
        replica.name,
        primary.name,
        streaming.detail,
    )


def _record_upstreams(upstreams: Mapping[int, Endpoint | None], now: datetime) -> None:
    """Record ``upstream`` for endpoints not recorded otherwise: one update per value."""
    groups: dict[Endpoint | None, list[int]] = {}
    for pk, value in upstreams.items():
        groups.setdefault(value, []).append(pk)
    for value, pks in groups.items():
        Endpoint.objects.filter(pk__in=pks).update(
            upstream=value, upstream_observed_at=now, updated_at=now
        )


def _health_check(observation: Observation, now: datetime) -> HealthCheck:
    result = observation.result
    return HealthCheck(
        endpoint=observation.endpoint,
        checked_at=now,
        ok=result.ok,
        latency_ms=result.latency_ms,
        in_recovery=result.in_recovery,
        lag_bytes=observation.lag_bytes,
        lag_s=result.replay_lag_s,
        connections_in_use=result.connections_in_use,
        max_connections=result.max_connections,
        error=result.error,
        score=observation.score,
    )


def _record(
    observation: Observation, now: datetime, upstreams: Mapping[int, Endpoint | None]
) -> None:
    """One update of the endpoint's observed fields (``upstream`` too if in ``upstreams``)."""
    endpoint, result = observation.endpoint, observation.result
    fields: dict[str, object] = {
        "last_checked_at": now,
        "consecutive_failures": observation.consecutive_failures,
        "last_error": result.error,
        "health_score": observation.score,
        "role_mismatch": observation.role_mismatch,
        "updated_at": now,
    }
    if observation.state != State.FENCED:
        # Decided in the database: a failover or an operator may have fenced the endpoint
        # while it was being probed, and a sweep must never unfence it.
        fields["state"] = Case(
            When(state=State.FENCED, then=F("state")), default=Value(observation.state)
        )
    if result.ok:
        fields.update(
            in_recovery=result.in_recovery,
            wal_lsn=result.wal_lsn,
            last_latency_ms=result.latency_ms,
            replication_lag_s=result.replay_lag_s,
            replication_lag_bytes=observation.lag_bytes,
        )
    if endpoint.pk in upstreams:
        fields.update(upstream=upstreams[endpoint.pk], upstream_observed_at=now)
    # .update(): a full save would race with admin edits of the configured fields.
    Endpoint.objects.filter(pk=endpoint.pk).update(**fields)


def react(cluster: Cluster, observations: list[Observation]) -> None:
    """Step 5 of a sweep: make a split-brain endpoint refuse writes; start failover."""
    if cluster.fence_writes:
        for observation in observations:
            # read_only: already refused on an earlier sweep (the setting persists).
            if observation.writable_while_fenced and not observation.result.read_only:
                _refuse_writes(observation.endpoint)
    if cluster.auto_failover and primary_is_down(cluster, observations):
        _fail_over(cluster)


def primary_is_down(cluster: Cluster, observations: Iterable[Observation]) -> bool:
    """The registered primary failed ``failure_threshold`` consecutive probes."""
    return any(
        o.endpoint.role == Role.PRIMARY and o.consecutive_failures >= cluster.failure_threshold
        for o in observations
    )


def needs_reaction(cluster: Cluster, observations: list[Observation]) -> bool:
    return (cluster.auto_failover and primary_is_down(cluster, observations)) or (
        cluster.fence_writes
        and any(o.writable_while_fenced and not o.result.read_only for o in observations)
    )


# The failover module is imported when needed, and whatever it raises (an import error
# included) is logged: the sweep's observations are recorded already, and the next sweep
# tries again.


def _refuse_writes(endpoint: Endpoint) -> None:
    try:
        from endpoints import failover

        failover.refuse_writes(endpoint)
    except Exception:
        logger.exception("making fenced endpoint %s refuse writes failed", endpoint)


def _fail_over(cluster: Cluster) -> None:
    try:
        from endpoints import failover

        failover.on_primary_down(cluster)
    except Exception:
        logger.exception("automatic failover of cluster %s failed", cluster)


# Scheduling


def sweep_lock(client: redis.Redis, cluster: Cluster) -> Lock:
    """The cross-machine lock that keeps sweeps of ``cluster`` from overlapping."""
    ttl_s = SWEEP_LOCK_PROBE_TIMEOUTS * cluster.probe_timeout_s + SWEEP_LOCK_MARGIN_S
    return client.lock(SWEEP_LOCK_KEY.format(cluster_id=cluster.pk), timeout=ttl_s)


def sweep_exclusively(cluster_id: int, *, client: redis.Redis | None = None) -> SweepReport:
    """Sweep the cluster unless another sweep of it holds the lock; then skip, not wait."""
    return sweep_now(cluster_id, client=client)[0]


def sweep_now(
    cluster_id: int, *, client: redis.Redis | None = None
) -> tuple[SweepReport, list[Observation]]:
    """:func:`sweep_exclusively`, with the observations (an operator's "check now")."""
    started = time.monotonic()
    cluster = Cluster.objects.filter(pk=cluster_id).first()
    if cluster is None:
        return SweepReport(cluster_id, swept=False, skipped_because="the cluster was removed"), []
    lock = sweep_lock(client or _redis(), cluster)
    try:
        acquired = lock.acquire(blocking=False)
    except redis.RedisError as exc:
        # Without the lock two sweeps could overlap (and react twice): skip instead.
        logger.error("no sweep of %s: the sweep lock is unreachable in Redis (%s)", cluster, exc)
        return SweepReport(cluster_id, swept=False, skipped_because=f"Redis unreachable: {exc}"), []
    if not acquired:
        return SweepReport(
            cluster_id, swept=False, skipped_because="another sweep of this cluster is running"
        ), []
    try:
        observations = probe_and_record(cluster)
        if needs_reaction(cluster, observations):
            _extend(lock, REACT_LOCK_TTL_S)
            react(cluster, observations)
    finally:
        _release(lock, cluster)
    report = SweepReport(
        cluster_id,
        swept=True,
        endpoints=len(observations),
        available=sum(o.available for o in observations),
        elapsed_s=round(time.monotonic() - started, 3),
    )
    return report, observations


def _extend(lock: Lock, ttl_s: float) -> None:
    try:
        lock.extend(ttl_s, replace_ttl=True)
    except redis.RedisError as exc:  # LockError included: the lock expired
        logger.warning("could not extend the sweep lock %s: %s", lock.name, exc)


def _release(lock: Lock, cluster: Cluster) -> None:
    try:
        lock.release()
    except redis.exceptions.LockError:
        logger.warning(
            "the sweep of %s outlived its lock; another sweep may have started meanwhile",
            cluster,
        )
    except redis.RedisError as exc:
        logger.warning("could not release the sweep lock of %s (%s); it expires", cluster, exc)


_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    # One client (and its connection pool) per process rather than one per task; timeouts
    # longer than the request path's (topology.redis_client), as tasks are not in a hurry.
    global _client
    if _client is None:
        _client = redis.Redis.from_url(
            settings.REDIS_URL,
            socket_timeout=REDIS_TIMEOUT_S,
            socket_connect_timeout=REDIS_TIMEOUT_S,
        )
    return _client


def _forget_redis_after_fork() -> None:
    # A socket inherited from the parent would be shared by two processes.
    global _client
    _client = None


os.register_at_fork(after_in_child=_forget_redis_after_fork)


def dispatch_claim_ttl_s(check_interval_s: float) -> float:
    """How long a dispatch claim lasts: a little under the interval, so ticks keep pace."""
    return max(check_interval_s - DISPATCH_SLACK_S, check_interval_s / 2)


def claim_due_sweeps(
    clusters: Iterable[tuple[int, float]], *, client: redis.Redis | None = None
) -> list[int]:
    """Of ``(cluster_id, check_interval_s)`` pairs, the clusters whose sweep is due.

    Each is claimed in Redis (``SET NX`` with the interval as its expiry) in one round
    trip, so only one dispatcher gets a given cluster per interval, even across beat
    restarts or several dispatchers at once.
    """
    clusters = list(clusters)
    if not clusters:
        return []
    pipeline = (client or _redis()).pipeline(transaction=False)
    now = f"{time.time():.3f}"
    for cluster_id, interval_s in clusters:
        ttl_ms = max(1, int(dispatch_claim_ttl_s(interval_s) * 1000))
        pipeline.set(DISPATCH_KEY.format(cluster_id=cluster_id), now, nx=True, px=ttl_ms)
    claimed = pipeline.execute()
    return [cluster_id for (cluster_id, _), ok in zip(clusters, claimed, strict=True) if ok]


def sweep_expiry_s(check_interval_s: float) -> float:
    """A sweep not started within one interval is dropped: the next one is on its way."""
    return max(check_interval_s, DISPATCH_TICK_S)


# Retention


def prune_health_checks(
    *, older_than: timedelta, batch_size: int = PRUNE_BATCH_SIZE
) -> PruneReport:
    """Delete HealthCheck rows older than ``older_than``, ``batch_size`` rows per statement.

    Batches keep each write transaction short, so sweeps writing at the same time (and
    SQLite's single writer) are never held up for long.
    """
    cutoff = timezone.now() - older_than
    deleted = batches = 0
    while True:
        ids = list(
            HealthCheck.objects.filter(checked_at__lt=cutoff)
            .order_by()
            .values_list("pk", flat=True)[:batch_size]
        )
        if not ids:
            break
        count, _ = HealthCheck.objects.filter(pk__in=ids).delete()
        deleted += count
        batches += 1
        if len(ids) < batch_size:
            break
    return PruneReport(deleted=deleted, batches=batches)
