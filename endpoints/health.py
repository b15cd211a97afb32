"""A sweep: probe every enabled endpoint of a cluster at once and record what was seen.

Each sweep stores one HealthCheck row per endpoint and updates the endpoint's
observed status (recovery, latency, replication lag, consecutive failures,
state), then bumps the topology version so every router works from it within
a second. Replication lag in bytes is measured against the primary's WAL
position from the same sweep.

State: ``down`` after the cluster's ``failure_threshold`` consecutive failed
probes, ``healthy`` when a probe answers, ``fenced`` stays fenced whatever the
probe says (only an operator clears it).
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from endpoints import topology
from endpoints.models import Cluster, Endpoint, HealthCheck, Role, State
from endpoints.probe import ProbeResult, check_endpoints


@dataclass(frozen=True)
class Observation:
    endpoint: Endpoint
    result: ProbeResult
    lag_bytes: int | None


def replication_lag_bytes(primary_lsn: int | None, result: ProbeResult) -> int | None:
    """How far a replica's replayed position is behind the primary's, never negative."""
    if primary_lsn is None or not result.ok or not result.in_recovery or result.wal_lsn is None:
        return None
    return max(0, primary_lsn - result.wal_lsn)


def next_state(current: str, *, ok: bool, consecutive_failures: int, threshold: int) -> str:
    if current == State.FENCED:
        return State.FENCED
    if ok:
        return State.HEALTHY
    if consecutive_failures >= threshold:
        return State.DOWN
    return current


def sweep(cluster: Cluster) -> list[Observation]:
    """Probe every enabled endpoint of ``cluster`` concurrently and record the results."""
    endpoints = list(cluster.endpoints.filter(enabled=True).select_related("cluster"))
    results = check_endpoints(endpoints)
    primary_lsn = next(
        (
            result.wal_lsn
            for endpoint, result in results
            if endpoint.role == Role.PRIMARY and result.ok and not result.in_recovery
        ),
        None,
    )
    now = timezone.now()
    observations = [
        Observation(endpoint, result, replication_lag_bytes(primary_lsn, result))
        for endpoint, result in results
    ]
    with transaction.atomic():
        HealthCheck.objects.bulk_create(
            HealthCheck(
                endpoint=o.endpoint,
                checked_at=now,
                ok=o.result.ok,
                latency_ms=o.result.latency_ms,
                in_recovery=o.result.in_recovery,
                lag_bytes=o.lag_bytes,
                lag_s=o.result.replay_lag_s,
                connections_in_use=o.result.connections_in_use,
                max_connections=o.result.max_connections,
                error=o.result.error,
            )
            for o in observations
        )
        for o in observations:
            _record(o, now, cluster.failure_threshold)
    topology.notify_changed()
    return observations


def _record(observation: Observation, now: object, threshold: int) -> None:
    endpoint, result = observation.endpoint, observation.result
    failures = 0 if result.ok else endpoint.consecutive_failures + 1
    fields: dict[str, object] = {
        "last_checked_at": now,
        "consecutive_failures": failures,
        "last_error": result.error,
        "state": next_state(
            endpoint.state, ok=result.ok, consecutive_failures=failures, threshold=threshold
        ),
    }
    if result.ok:
        fields.update(
            in_recovery=result.in_recovery,
            last_latency_ms=result.latency_ms,
            replication_lag_s=result.replay_lag_s,
            replication_lag_bytes=observation.lag_bytes,
        )
    # .update(): a full save would race with admin edits of the configured fields.
    Endpoint.objects.filter(pk=endpoint.pk).update(**fields, updated_at=now)
