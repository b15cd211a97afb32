"""Recording a sweep: probe, then store what was seen; and the retention of that history.

:func:`probe_and_record` probes every enabled endpoint of a cluster concurrently
(:func:`endpoints.health.probe.sweep_endpoints`, in :func:`probe_order`), stores one
HealthCheck row per endpoint that answered or failed in time, updates each Endpoint's
observed fields in one ``UPDATE`` (never unfencing one), records each replica's
``upstream`` when the registered primary answered, and publishes a topology change
when something routing depends on changed. :func:`prune_health_checks` deletes old
HealthCheck rows in batches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Case, F, Value, When
from django.utils import timezone

from endpoints import coordination
from endpoints.core.observations import Observation, ProbeResult
from endpoints.core.vocabulary import Role, State
from endpoints.health import upstream
from endpoints.health.observations import (
    answering_primary,
    is_suspect,
    observe,
    primary_lsn_of,
    probe_order,
    routing_relevant_change,
    streams_seen,
    sweep_was_starved,
)
from endpoints.health.probe import sweep_endpoints
from endpoints.health.upstream import Streaming
from endpoints.models import Cluster, Endpoint, HealthCheck

logger = logging.getLogger("pgwarden.health")

PRUNE_BATCH_SIZE = 10_000
# How long a sweep waits for DNS to resolve replica hosts not in the cache (IP addresses
# need none); a host still unresolved then counts as not seen streaming this sweep.
RESOLVE_WAIT_S = 0.5


@dataclass(frozen=True)
class PruneReport:
    deleted: int
    batches: int


def probe_and_record(cluster: Cluster) -> list[Observation]:
    """Probe every enabled endpoint, store what was seen, tell the routers if it matters.

    Steps 1-3 of a sweep (see :mod:`endpoints.health`); alerts and reactions are the
    control cycle's (:func:`endpoints.control.sweep`). Takes no lock.
    """
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
        coordination.notify_topology_changed()
    return observations


def _names(names: list[str], shown: int = 10) -> str:
    if len(names) <= shown:
        return ", ".join(names)
    return f"{', '.join(names[:shown])} and {len(names) - shown} more"


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
