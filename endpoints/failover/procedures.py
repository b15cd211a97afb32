"""The procedures: failover (automatic and manual), switchover and re-admission.

Each runs under the cluster's failover lock (:mod:`endpoints.failover.lock`), decides on a
fresh survey (:mod:`endpoints.failover.decision`), acts on the servers
(:mod:`endpoints.failover.server`) and in the registry (:mod:`endpoints.failover.registry`),
and records every step in its event (:mod:`endpoints.failover.audit`). The order of the
steps, and why, is told in the package's docstring (:mod:`endpoints.failover`).

Whatever the outcome, :func:`fail_over` and :func:`switchover` return the event; they
raise only before an event exists (a bad target, the lock held or unreachable) or when
the event itself cannot be written (it then says so, if it still can).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

from django.utils import timezone

from endpoints.core.candidates import format_lsn
from endpoints.core.errortext import one_line
from endpoints.core.vocabulary import AlertSeverity, FailoverKind, FailoverOutcome, State
from endpoints.core.waiting import poll_until
from endpoints.failover import registry, server
from endpoints.failover.audit import Audit, event_label, fenced_reason, start_event
from endpoints.failover.decision import check_target, describe_plan, plan_from_survey
from endpoints.failover.errors import (
    FailoverError,
    FailoverInProgress,
    NotReadmittable,
    PrimaryUnavailable,
)
from endpoints.failover.lock import ClusterLock
from endpoints.failover.survey import Survey, take_survey
from endpoints.health.probe import check_endpoint
from endpoints.models import Cluster, Endpoint, FailoverEvent

logger = logging.getLogger("pgwarden.failover")

# Replicas retry their primary every wal_retrieve_retry_interval (5 s by default).
STREAM_WAIT_S = 30.0
# After an aborted automatic failover, wait this long before trying again: the sweep
# calls every second while the primary stays down, and each abort records an event and
# sends alerts. Long enough to avoid a storm, short enough to promote a replica that
# catches up (or that an operator re-enables) soon after.
ABORTED_RETRY_S = 30.0


# Failover


def fail_over(
    cluster: Cluster,
    *,
    to: str | None = None,
    kind: str = FailoverKind.MANUAL,
    reason: str,
) -> FailoverEvent:
    """Promote ``to`` (or the best replica) now; returns the event, whatever its outcome.

    Raises :class:`FailoverInProgress` if another failover of the cluster runs,
    :class:`UnknownEndpoint` for a bad ``to``, :class:`FailoverError` without Redis.
    A live old primary is made read-only first; use :func:`switchover` to lose nothing.
    """
    if kind not in (FailoverKind.AUTOMATIC, FailoverKind.MANUAL):
        raise ValueError(f"kind must be automatic or manual, not {kind!r} (see switchover())")
    check_target(cluster, to)
    with ClusterLock(cluster) as lock:
        return _fail_over_locked(
            take_survey(cluster), lock, to=to, kind=FailoverKind(kind), reason=reason
        )


def on_primary_down(cluster: Cluster) -> FailoverEvent | None:
    """The health sweep saw the primary fail ``failure_threshold`` probes: fail over if so.

    Under the lock, re-reads the registry and probes the primary once more (with the
    replicas, concurrently). ``None`` when automatic failover is off or paused, the primary answers,
    no primary is registered, or another worker is already failing over: so workers that
    race here, or arrive just after a failover, never cause a second one.
    """
    try:
        with ClusterLock(cluster) as lock:
            cluster = Cluster.objects.get(pk=cluster.pk)
            if not cluster.fails_over_automatically or _recently_aborted(cluster):
                return None
            survey = take_survey(cluster)
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
                survey, lock, to=None, kind=FailoverKind.AUTOMATIC, reason=reason
            )
    except FailoverInProgress:
        return None


def _recently_aborted(cluster: Cluster) -> bool:
    last = cluster.failover_events.order_by("-started_at").first()
    return (
        last is not None
        and last.outcome == FailoverOutcome.ABORTED
        and last.kind == FailoverKind.AUTOMATIC
        and (timezone.now() - last.started_at).total_seconds() < ABORTED_RETRY_S
    )


def _fail_over_locked(
    survey: Survey, lock: ClusterLock, *, to: str | None, kind: FailoverKind, reason: str
) -> FailoverEvent:
    audit = start_event(survey, kind, reason, lock)
    return _recorded(audit, lambda: _fail_over_steps(survey, audit, to))


def _fail_over_steps(survey: Survey, audit: Audit, to: str | None) -> FailoverEvent:
    candidate = _planned_candidate(survey, audit, to)
    if isinstance(candidate, FailoverEvent):
        return candidate  # nothing to promote: the event says why
    if survey.primary is not None and survey.primary_writable:
        try:
            ended = server.refuse_writes(survey.primary)
        except FailoverError as exc:
            audit.step("fence old primary", False, str(exc))
            return audit.finish(
                FailoverOutcome.ABORTED,
                f"the old primary still answers and could not be made read-only ({exc}); "
                "stop it, or use a switchover",
                severity=AlertSeverity.CRITICAL,
            )
        audit.step(
            "fence old primary",
            True,
            f"{survey.primary.name} still answered: now read-only, {ended} client sessions ended",
        )
    return _promote_and_switch(survey, candidate, audit)


def _planned_candidate(survey: Survey, audit: Audit, to: str | None) -> Endpoint | FailoverEvent:
    """The replica to promote, with the plan recorded as a step; or the aborted event."""
    plan = plan_from_survey(survey, to)
    audit.step("plan", plan.candidate is not None, describe_plan(plan))
    if plan.candidate is None:
        return audit.finish(
            FailoverOutcome.ABORTED,
            f"nothing promoted: {plan.reason}",
            severity=AlertSeverity.CRITICAL,
        )
    return survey.replica(plan.candidate)


def _recorded(audit: Audit, steps: Callable[[], FailoverEvent]) -> FailoverEvent:
    """Run ``steps``; if they raise (a lost lock, the control database), the event says so."""
    try:
        return steps()
    except Exception as exc:
        if audit.event.outcome == FailoverOutcome.IN_PROGRESS:
            with contextlib.suppress(Exception):  # the original error matters more
                audit.finish(
                    FailoverOutcome.FAILED,
                    f"stopped by an unexpected error: {one_line(exc)}",
                    severity=AlertSeverity.CRITICAL,
                )
        raise


# Steps shared by failover and switchover


def _promote_and_switch(survey: Survey, candidate: Endpoint, audit: Audit) -> FailoverEvent:
    """Promote, record the new primary, re-point the replicas: shared by failover and switchover."""
    event = audit.event
    try:
        _promote(candidate, audit)
    except FailoverError as exc:
        message = str(exc)
        if not server.still_in_recovery(candidate):
            # It may finish promoting later: a possible second primary gets no traffic.
            registry.fence(
                candidate, f"its promotion by {event_label(event)} did not complete: {message}"
            )
            message += f"; {candidate.name} is fenced, as it may still become a primary"
        audit.step("promote", False, message)
        return audit.finish(FailoverOutcome.FAILED, message, severity=AlertSeverity.CRITICAL)

    demoted = registry.record_new_primary(
        survey.cluster, candidate, fenced_reason(event, candidate)
    )
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
        AlertSeverity.CRITICAL
        if problems
        else AlertSeverity.WARNING
        if event.kind == FailoverKind.AUTOMATIC
        else AlertSeverity.INFO
    )
    return audit.finish(FailoverOutcome.SUCCEEDED, message, severity=severity)


def _promote(candidate: Endpoint, audit: Audit) -> None:
    """Promote ``candidate`` and verify it left recovery; FailoverError if either fails."""
    elapsed_ms = server.promote(candidate)
    audit.step(
        "promote",
        True,
        f"pg_promote() on {candidate.name} ({candidate.host}:{candidate.port}) returned true "
        f"after {elapsed_ms:.0f} ms",
    )
    writing_at = server.wait_until_promoted(candidate)
    audit.step(
        "verify promotion",
        True,
        f"{candidate.name} is out of recovery, writing WAL at {writing_at}",
    )


def _repoint_replicas(survey: Survey, new_primary: Endpoint, audit: Audit) -> list[str]:
    """Re-point every other enabled replica and wait until each streams; the problems found."""
    problems: list[str] = []
    repointed: list[server.Repointed] = []
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
            done = server.repoint(replica, new_primary)
        except FailoverError as exc:
            audit.step(step, False, str(exc))
            problems.append(str(exc))
            continue
        slot = f", slot {done.slot!r} created there" if done.slot else ""
        audit.step(step, True, f"primary_conninfo -> {new_primary.host}:{new_primary.port}{slot}")
        repointed.append(done)

    deadline = time.monotonic() + STREAM_WAIT_S
    for done in repointed:
        problem = _verify_streaming(done.replica, new_primary, audit, deadline)
        if problem:
            problems.append(problem)
    return problems


def _verify_streaming(
    replica: Endpoint, new_primary: Endpoint, audit: Audit, deadline: float
) -> str:
    """Wait (until the shared ``deadline``) for ``replica`` to stream; the problem, or ""."""
    seen = ""

    def streaming() -> bool:
        nonlocal seen
        try:
            ok, seen = server.streams_from(replica, new_primary)
        except FailoverError as exc:
            ok, seen = False, str(exc)
        return ok

    step = f"verify {replica.name} streams"
    if poll_until(streaming, timeout_s=deadline - time.monotonic(), interval_s=0.1):
        audit.step(step, True, f"{replica.name} {seen}")
        return ""
    problem = (
        f"{replica.name} does not stream from {new_primary.name} after "
        f"{STREAM_WAIT_S:g} s ({seen}); check its log, or rebuild it"
    )
    audit.step(step, False, problem)
    return problem


# Switchover


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
    check_target(cluster, to)
    with ClusterLock(cluster) as lock:
        survey = take_survey(cluster)
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
        audit = start_event(survey, FailoverKind.SWITCHOVER, reason, lock)
        return _recorded(audit, lambda: _switchover_steps(survey, old, audit, to, timeout_s))


def _switchover_steps(
    survey: Survey, old: Endpoint, audit: Audit, to: str | None, timeout_s: float
) -> FailoverEvent:
    candidate = _planned_candidate(survey, audit, to)
    if isinstance(candidate, FailoverEvent):
        return candidate  # nothing to promote: the event says why
    try:
        ended = server.refuse_writes(old)
    except FailoverError as exc:
        audit.step("stop writes on the old primary", False, str(exc))
        _undo_read_only(old, audit)
        return audit.finish(FailoverOutcome.ABORTED, str(exc), severity=AlertSeverity.CRITICAL)
    audit.step(
        "stop writes on the old primary",
        True,
        f"{old.name} is read-only, {ended} client sessions ended",
    )
    try:
        final_lsn = server.final_position(old)
        audit.step("final position", True, f"{old.name} wrote WAL up to {format_lsn(final_lsn)}")
        server.wait_for_replay(candidate, final_lsn, timeout_s)
    except FailoverError as exc:
        audit.step("catch up", False, str(exc))
        _undo_read_only(old, audit)
        return audit.finish(
            FailoverOutcome.ABORTED,
            f"{exc}; {old.name} is writable again, nothing changed",
            severity=AlertSeverity.CRITICAL,
        )
    audit.step("catch up", True, f"{candidate.name} replayed up to {format_lsn(final_lsn)}")
    event = _promote_and_switch(survey, candidate, audit)
    if event.outcome == FailoverOutcome.FAILED and server.still_in_recovery(candidate):
        # Nothing changed after all: the old primary may take writes again.
        _undo_read_only(old, audit)
    return event


def _undo_read_only(endpoint: Endpoint, audit: Audit) -> None:
    try:
        server.allow_writes(endpoint)
    except FailoverError as exc:
        audit.step("undo read-only", False, f"{exc}; run ALTER SYSTEM RESET by hand")
    else:
        audit.step("undo read-only", True, f"{endpoint.name} accepts writes again")


# Re-admission


def readmit(endpoint: Endpoint) -> None:
    """Clear the fence of an endpoint rebuilt as a replica: it must answer, in recovery."""
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
    registry.clear_fence(endpoint)
    logger.info("re-admitted %s", endpoint)
