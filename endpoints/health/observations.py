"""What a sweep derives from its probes: pure functions over plain data, no I/O.

From one probe of one endpoint, :func:`observe` derives its state, health score,
consecutive failures and role mismatch (the rules and the score formula are in
:mod:`endpoints.core.scoring`); :func:`routing_relevant_change` says whether the
routers must reload to see it; :func:`sweep_was_starved` tells a sweep whose
failures say nothing about the endpoints; :func:`probe_order` decides where a sweep
spends its CPU first; :func:`answering_primary`, :func:`primary_lsn_of` and
:func:`streams_seen` read the primary's answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from endpoints.core import scoring
from endpoints.core.observations import Observation, ProbeResult, WalSender
from endpoints.core.vocabulary import Role, State
from endpoints.health.upstream import Resolution, Streaming, streaming_from_primary

if TYPE_CHECKING:
    from endpoints.models import Cluster, Endpoint

# A change of health score this large reaches the routers (health_based balancing).
SCORE_CHANGE_TO_PUBLISH = 10
# Probes that overrun the probe timeout by more than this were starved (sweep_was_starved).
STARVED_OVERRUN_MIN_S = 0.5
STARVED_OVERRUN_SHARE = 0.25


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
