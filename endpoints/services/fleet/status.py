"""What the fleet looks like: cluster status, live database info, health history, a sweep now.

Lookups raise ``routing.ClusterNotFound`` (naming the known clusters) or
:class:`UnknownEndpoint` (naming the cluster's endpoints). ``check_health`` is the one
call here that changes anything: it records a sweep, as a scheduled sweep does.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from django.db.models import Avg, Count, OuterRef, Q, Subquery
from django.utils import timezone
from pydantic import Field

from endpoints import control, routing
from endpoints.core.conninfo import ConnectionInfo
from endpoints.core.crypto import redact
from endpoints.core.purposes import ASSISTANT_READ, Purpose
from endpoints.core.retry import CircuitSnapshot
from endpoints.core.vocabulary import AlertKind, AlertSeverity, ReadPreference, Role, State
from endpoints.core.vocabulary import Strategy as LoadBalancing
from endpoints.health.probe import ProbeResult, probe_async
from endpoints.models import Cluster, Endpoint, HealthCheck
from endpoints.routing.pools import PoolStats
from endpoints.routing.stats import EndpointRouting, RoutingTotals
from endpoints.routing.topology import ClusterView
from endpoints.services.fleet.records import (
    FailoverEventRecord,
    PoolSettings,
    _error,
    _iso,
    _primary_first,
    _round,
    failover_event,
    pool_settings,
)
from endpoints.services.results import Answer, Result

MAX_HISTORY_MINUTES = 7 * 24 * 60
MAX_HISTORY_LIMIT = 1000
ACTIVE_ALERTS_SHOWN = 50


class UnknownEndpoint(ValueError):
    """The cluster has no endpoint of that name."""


# Lookups


def get_cluster(name: str) -> Cluster:
    cluster = Cluster.objects.filter(name=name).first() if isinstance(name, str) else None
    if cluster is None:
        known = list(Cluster.objects.order_by("name").values_list("name", flat=True))
        raise routing.ClusterNotFound(str(name), known)
    return cluster


def get_endpoint(cluster: Cluster, name: str) -> Endpoint:
    endpoint = (
        cluster.endpoints.select_related("cluster").filter(name=name).first()
        if isinstance(name, str)
        else None
    )
    if endpoint is None:
        raise unknown_endpoint(cluster, name)
    return endpoint


def unknown_endpoint(cluster: Cluster, name: object) -> UnknownEndpoint:
    names = ", ".join(cluster.endpoints.order_by("name").values_list("name", flat=True))
    return UnknownEndpoint(
        f"cluster {cluster.name!r} has no endpoint {name!r} (endpoints: {names or 'none'})"
    )


# Live probes


class DatabaseEntry(Result):
    """One endpoint, probed now as the purpose's role."""

    name: str
    role: Role
    host: str
    port: int
    database: str
    user: str
    sslmode: str
    enabled: bool
    reachable: bool
    server_version: str | None
    in_recovery: bool | None
    latency_ms: float | None
    connections_in_use: int | None
    max_connections: int | None
    error: str | None
    pool: PoolSettings


class DatabaseInfo(Answer):
    cluster: str
    endpoints: list[DatabaseEntry]


def _database_entry(endpoint: Endpoint, user: str, result: ProbeResult) -> DatabaseEntry:
    return DatabaseEntry(
        name=endpoint.name,
        role=Role(endpoint.role),
        host=endpoint.host,
        port=endpoint.port,
        database=endpoint.dbname,
        user=user,
        sslmode=endpoint.sslmode,
        enabled=endpoint.enabled,
        reachable=result.ok,
        server_version=result.server_version,
        in_recovery=result.in_recovery,
        latency_ms=_round(result.latency_ms),
        connections_in_use=result.connections_in_use,
        max_connections=result.max_connections,
        error=_error(result.error),
        pool=pool_settings(endpoint),
    )


def database_info(cluster: str, *, purpose: Purpose = ASSISTANT_READ) -> DatabaseInfo:
    """Probe every endpoint now, all at once (each bounded by the connect timeout).

    Each probe connects as ``purpose``'s role (the assistant's unless named), with the
    settings its sessions carry, exactly as that purpose's routed queries do.
    """
    found = get_cluster(cluster)
    endpoints = _primary_first(found.endpoints.select_related("cluster"))
    view = routing.get_router(purpose).topology.current().cluster(found.name)
    connections = [_purpose_connection(view, endpoint) for endpoint in endpoints]
    results = asyncio.run(_probe_all(connections, float(found.connect_timeout_s)))
    return DatabaseInfo(
        cluster=found.name,
        endpoints=[
            _database_entry(endpoint, info.user if not isinstance(info, str) else "", result)
            for endpoint, info, result in zip(endpoints, connections, results, strict=True)
        ],
    )


def _purpose_connection(view: ClusterView | None, endpoint: Endpoint) -> ConnectionInfo | str:
    """How ``view``'s purpose connects to ``endpoint``, or why it cannot (a message)."""
    seen = view.by_name.get(endpoint.name) if view is not None else None
    if seen is None:
        return "not in this process's view of the cluster yet; try again in a second"
    if seen.connection is None:
        return seen.unusable or "no connection settings"
    return seen.connection


async def _probe_all(
    connections: list[ConnectionInfo | str], timeout_s: float
) -> list[ProbeResult]:
    async def one(info: ConnectionInfo | str) -> ProbeResult:
        if isinstance(info, str):
            return ProbeResult(ok=False, error=info)
        return await probe_async(info, timeout_s)

    return list(await asyncio.gather(*(one(info) for info in connections)))


# Status


class EndpointStatus(Result):
    """The registry's view of an endpoint, this process's router's, and its health checks."""

    name: str
    role: Role
    address: str
    enabled: bool
    state: State
    weight: int
    health_score: int | None
    # This process's router (its snapshot is at most about a second old); not routed yet:
    # unavailable, no counts.
    available: bool = False
    unusable: str | None = None
    requests: int = 0
    errors: int = 0
    retries: int = 0
    latency_avg_ms: float | None = None
    latency_p95_ms: float | None = None
    circuit: CircuitSnapshot | None = Field(default=None, description="The circuit breaker.")
    pool: PoolStats | None = Field(default=None, description="This process's pool.")
    # What the health checks recorded.
    last_latency_ms: float | None
    replication_lag_s: float | None
    replication_lag_bytes: int | None
    in_recovery: bool | None
    consecutive_failures: int
    last_checked_at: str | None
    last_error: str | None
    role_mismatch: bool
    fenced_reason: str | None


class ActiveAlert(Result):
    key: str
    kind: AlertKind
    severity: AlertSeverity
    message: str
    endpoint: str | None
    since: str | None


class ClusterStatus(Answer):
    cluster: str
    primary: str | None
    auto_failover: bool
    paused: bool = Field(description="Automatic failover is paused for maintenance.")
    paused_since: str | None = Field(description="When the pause began (ISO 8601), or null.")
    pause_reason: str = Field(description="Why it is paused; empty when not paused.")
    read_preference: ReadPreference
    load_balancing: LoadBalancing
    topology_version: int | None
    active_alerts: list[ActiveAlert]
    last_failover: FailoverEventRecord | None
    endpoints: list[EndpointStatus]
    totals: RoutingTotals = Field(description="This process's routing totals.")


def _router_fields(routed: EndpointRouting | None) -> dict[str, Any]:
    """What this process's router says of the endpoint; nothing before its snapshot has it."""
    if routed is None:
        return {}
    return {
        "available": routed.available,
        "unusable": routed.unusable,
        "requests": routed.requests,
        "errors": routed.errors,
        "retries": routed.retries,
        "latency_avg_ms": routed.latency_avg_ms,
        "latency_p95_ms": routed.latency_p95_ms,
        "circuit": routed.circuit,
        "pool": routed.pool,
    }


def _status_entry(endpoint: Endpoint, routed: EndpointRouting | None) -> EndpointStatus:
    return EndpointStatus(
        name=endpoint.name,
        role=Role(endpoint.role),
        address=f"{endpoint.host}:{endpoint.port}",
        enabled=endpoint.enabled,
        state=State(endpoint.state),
        weight=endpoint.weight,
        health_score=endpoint.health_score,
        **_router_fields(routed),
        last_latency_ms=_round(endpoint.last_latency_ms),
        replication_lag_s=endpoint.replication_lag_s,
        replication_lag_bytes=endpoint.replication_lag_bytes,
        in_recovery=endpoint.in_recovery,
        consecutive_failures=endpoint.consecutive_failures,
        last_checked_at=_iso(endpoint.last_checked_at),
        last_error=_error(endpoint.last_error),
        role_mismatch=endpoint.role_mismatch,
        fenced_reason=endpoint.fenced_reason or None,
    )


def _active_alerts(cluster: Cluster) -> list[ActiveAlert]:
    alerts = (
        cluster.alerts.filter(cleared_at__isnull=True)
        .select_related("endpoint")
        .order_by("-raised_at")[:ACTIVE_ALERTS_SHOWN]
    )
    return [
        ActiveAlert(
            key=alert.key,
            kind=AlertKind(alert.kind),
            severity=AlertSeverity(alert.severity),
            message=redact(alert.message),
            endpoint=alert.endpoint.name if alert.endpoint is not None else None,
            since=_iso(alert.raised_at),
        )
        for alert in alerts
    ]


def cluster_status(cluster: str) -> ClusterStatus:
    """The registry's view of the cluster merged with this process's routing statistics."""
    found = get_cluster(cluster)
    routed = routing.stats(found.name)
    endpoints = _primary_first(found.endpoints.all())
    last = found.failover_events.order_by("-started_at").first()
    primary = next((e for e in endpoints if e.role == Role.PRIMARY and e.enabled), None)
    return ClusterStatus(
        cluster=found.name,
        primary=primary.name if primary is not None else None,
        auto_failover=found.auto_failover,
        paused=found.paused,
        paused_since=_iso(found.paused_at) if found.paused else None,
        pause_reason=found.pause_reason if found.paused else "",
        read_preference=ReadPreference(routed.read_preference),
        load_balancing=LoadBalancing(routed.load_balancing),
        topology_version=routed.topology_version,
        active_alerts=_active_alerts(found),
        last_failover=failover_event(last, steps=False) if last is not None else None,
        endpoints=[_status_entry(e, routed.endpoints.get(e.name)) for e in endpoints],
        totals=routed.totals,
    )


# Health history


class CheckRecord(Result):
    """One recorded health check."""

    checked_at: str | None
    ok: bool
    latency_ms: float | None
    lag_s: float | None
    lag_bytes: int | None
    score: int | None
    in_recovery: bool | None
    connections_in_use: int | None
    max_connections: int | None
    error: str | None


class HistorySummary(Result):
    """The whole window, counted in the database."""

    checks: int
    failures: int
    availability_pct: float | None
    avg_latency_ms: float | None


class HealthHistory(Answer):
    cluster: str
    endpoint: str
    since: str | None
    checks: list[CheckRecord] = Field(description="Newest first, at most limit.")
    truncated: bool = Field(description="The window holds more checks than limit.")
    summary: HistorySummary


def _bounded_int(value: Any, argument: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{argument} must be an integer from {low} to {high}, not {value!r}")
    return value


def _check_record(check: HealthCheck) -> CheckRecord:
    return CheckRecord(
        checked_at=_iso(check.checked_at),
        ok=check.ok,
        latency_ms=_round(check.latency_ms),
        lag_s=check.lag_s,
        lag_bytes=check.lag_bytes,
        score=check.score,
        in_recovery=check.in_recovery,
        connections_in_use=check.connections_in_use,
        max_connections=check.max_connections,
        error=_error(check.error),
    )


def health_history(
    cluster: str, endpoint: str, *, since_minutes: int = 60, limit: int = 100
) -> HealthHistory:
    """The endpoint's health checks of the last ``since_minutes``, newest first.

    ``checks`` holds at most ``limit`` rows (``truncated`` says when there were more);
    ``summary`` covers the whole window, counted in the database.
    """
    since_minutes = _bounded_int(since_minutes, "since_minutes", 1, MAX_HISTORY_MINUTES)
    limit = _bounded_int(limit, "limit", 1, MAX_HISTORY_LIMIT)
    found = get_endpoint(get_cluster(cluster), endpoint)
    since = timezone.now() - timedelta(minutes=since_minutes)
    window = HealthCheck.objects.filter(endpoint=found, checked_at__gte=since)
    checks = list(window.order_by("-checked_at")[:limit])
    totals = window.aggregate(
        checks=Count("pk"),
        failures=Count("pk", filter=Q(ok=False)),
        avg_latency_ms=Avg("latency_ms", filter=Q(ok=True)),
    )
    count, failures = totals["checks"], totals["failures"]
    return HealthHistory(
        cluster=found.cluster.name,
        endpoint=found.name,
        since=_iso(since),
        checks=[_check_record(check) for check in checks],
        truncated=count > len(checks),
        summary=HistorySummary(
            checks=count,
            failures=failures,
            availability_pct=round(100 * (count - failures) / count, 2) if count else None,
            avg_latency_ms=_round(totals["avg_latency_ms"]),
        ),
    )


# A sweep now


class LatestCheck(Result):
    """An enabled endpoint's status and latest recorded health check."""

    name: str
    ok: bool | None
    state: State
    health_score: int | None
    latency_ms: float | None
    error: str | None
    checked_at: str | None


class HealthSweep(Answer):
    cluster: str
    swept: bool
    skipped_because: str | None = Field(description="Why not: another sweep held the lock.")
    elapsed_s: float | None
    endpoints: list[LatestCheck]


def _latest_check(endpoint: Endpoint, check: HealthCheck | None) -> LatestCheck:
    return LatestCheck(
        name=endpoint.name,
        ok=check.ok if check is not None else None,
        state=State(endpoint.state),
        health_score=endpoint.health_score,
        latency_ms=_round(check.latency_ms) if check is not None else None,
        error=_error(check.error) if check is not None else None,
        checked_at=_iso(check.checked_at) if check is not None else None,
    )


def _latest_checks(cluster: Cluster) -> list[LatestCheck]:
    """Each enabled endpoint's status and latest health check, in three queries."""
    enabled = cluster.endpoints.filter(enabled=True)
    latest = HealthCheck.objects.filter(endpoint=OuterRef("pk")).order_by("-checked_at")
    check_ids = dict(
        enabled.annotate(check_id=Subquery(latest.values("pk")[:1])).values_list("pk", "check_id")
    )
    checks = HealthCheck.objects.in_bulk([pk for pk in check_ids.values() if pk is not None])
    return [
        _latest_check(endpoint, checks.get(check_ids.get(endpoint.pk)))
        for endpoint in _primary_first(enabled)
    ]


def check_health(cluster: str) -> HealthSweep:
    """Sweep the cluster now, as a scheduled sweep does: probe, record, alert, react.

    Skipped (``swept`` false, ``skipped_because`` says why) when another sweep of the
    cluster holds its lock; the endpoints then show their latest recorded check.
    """
    found = get_cluster(cluster)
    report = control.sweep_exclusively(found.pk)
    return HealthSweep(
        cluster=found.name,
        swept=report.swept,
        skipped_because=report.skipped_because or None,
        elapsed_s=report.elapsed_s if report.swept else None,
        endpoints=_latest_checks(found),
    )
