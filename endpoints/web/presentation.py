"""How registry rows and router counters look: state badges, lag and latency text, tables.

Used by the admin pages and the fleet dashboard, so both show an endpoint the same way.
Contract: formatting only. The functions read values already loaded (a table given a
queryset evaluates it once, nothing more); every HTML table is rendered from a template
under ``templates/admin/endpoints/tables/`` with autoescaping on, so an endpoint name, an
alert message or a failover step detail holding markup is shown as text, never run.
Times are shown as stored (UTC), ``YYYY-MM-DD HH:MM:SS``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.template.loader import render_to_string
from django.utils.html import format_html
from django.utils.safestring import SafeString

from endpoints.core.vocabulary import Role, State
from endpoints.models import Alert, Endpoint, FailoverEvent, HealthCheck

if TYPE_CHECKING:
    from endpoints.routing.pools import PoolStats
    from endpoints.routing.stats import ClusterRouting

STATE_COLOURS: dict[str, str] = {
    State.HEALTHY: "#1e7d32",
    State.DEGRADED: "#b26a00",
    State.DOWN: "#c62828",
    State.FENCED: "#4a148c",
    State.UNKNOWN: "#616161",
}
NOTHING = "—"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
_TABLES = "admin/endpoints/tables"


# Values


def colour_of(endpoint: Endpoint) -> str:
    """The colour of the endpoint's state (unknown's grey for a state nobody coloured)."""
    return STATE_COLOURS.get(endpoint.state, STATE_COLOURS[State.UNKNOWN])


def state_badge(endpoint: Endpoint) -> SafeString:
    return format_html(
        '<span class="pgw-state pgw-state-{}" style="background:{};color:#fff;'
        'padding:2px 8px;border-radius:8px;font-weight:600">{}</span>',
        endpoint.state,
        colour_of(endpoint),
        endpoint.get_state_display(),
    )


def lag_text(endpoint: Endpoint) -> str:
    """A replica's replay lag (``1.5 s, 2048 B``); a dash for a primary or when unknown."""
    if endpoint.role == Role.PRIMARY or endpoint.replication_lag_s is None:
        return NOTHING
    bytes_part = (
        f", {endpoint.replication_lag_bytes} B"
        if endpoint.replication_lag_bytes is not None
        else ""
    )
    return f"{endpoint.replication_lag_s:.1f} s{bytes_part}"


def latency_text(latency_ms: float | None) -> str:
    """A probe's round trip, one decimal (``3.2 ms``)."""
    return NOTHING if latency_ms is None else f"{latency_ms:.1f} ms"


def ms_text(value_ms: float | None) -> str:
    """A router latency, two decimals (``0.42 ms``)."""
    return NOTHING if value_ms is None else f"{value_ms:.2f} ms"


def number_text(value: float | int | None, unit: str) -> str:
    """``1.5 s``, ``2048 B`` or ``87``: floats to one decimal, the unit after a space."""
    if value is None:
        return NOTHING
    text = f"{value:.1f}" if isinstance(value, float) else str(value)
    return f"{text} {unit}".strip()


def time_text(value: datetime) -> str:
    return value.strftime(TIME_FORMAT)


def _render(template: str, context: Mapping[str, Any]) -> SafeString:
    return SafeString(render_to_string(f"{_TABLES}/{template}", dict(context)).strip())


# Tables


def routing_stats_table(stats: ClusterRouting) -> SafeString:
    """The router's per-endpoint counters, pools and circuits, and the cluster totals."""
    rows = [
        {
            "name": name,
            "endpoint": e,
            "available": "yes" if e.available else "no",
            "latency_avg": ms_text(e.latency_avg_ms),
            "latency_p95": ms_text(e.latency_p95_ms),
            "circuit": e.circuit.state.replace("_", "-"),
            "pool": _pool_text(e.pool),
        }
        for name, e in stats.endpoints.items()
    ]
    totals = stats.totals
    score = totals.average_health_score
    return _render(
        "routing_stats.html",
        {
            "rows": rows,
            "totals": totals,
            "average_response": ms_text(totals.average_response_ms),
            "average_health_score": NOTHING if score is None else score,
        },
    )


def _pool_text(pool: PoolStats | None) -> str:
    if pool is None:
        return "no pool yet"
    return f"{pool.size} open, {pool.in_use} in use, {pool.idle} idle, {pool.waiting} waiting"


def failover_table(events: Iterable[FailoverEvent]) -> SafeString | str:
    """Failovers and switchovers, newest first, each linking to its audit page."""
    rows = [
        {
            "pk": event.pk,
            "started": time_text(event.started_at),
            "kind": event.get_kind_display(),
            "old_primary": event.old_primary_name or NOTHING,
            "new_primary": event.new_primary_name or NOTHING,
            "outcome": event.get_outcome_display(),
        }
        for event in events
    ]
    return _render("failovers.html", {"rows": rows}) if rows else "None."


def topology_table(endpoints: Sequence[Endpoint]) -> SafeString:
    """A cluster's endpoints (the primary first), what each replicates from, and its lag."""
    primary = next((e for e in endpoints if e.role == Role.PRIMARY and e.enabled), None)
    rows = []
    for endpoint in endpoints:
        if endpoint.role == Role.PRIMARY:
            replication = NOTHING
        elif primary is not None:
            replication = f"replicates from {primary.name}"
        else:
            replication = "no enabled primary"
        rows.append(
            {
                "name": endpoint.name,
                "role": endpoint.get_role_display()
                + ("" if endpoint.enabled else " (disabled)")
                + (" — role mismatch" if endpoint.role_mismatch else ""),
                "badge": state_badge(endpoint),
                "address": f"{endpoint.host}:{endpoint.port}",
                "replication": replication,
                "lag": lag_text(endpoint),
            }
        )
    return _render("topology.html", {"rows": rows})


def alerts_table(alerts: Iterable[Alert]) -> SafeString | str:
    """Alerts, newest first: when raised, how severe, and the message."""
    rows = [
        {
            "raised": time_text(alert.raised_at),
            "severity": alert.get_severity_display(),
            "message": alert.message,
        }
        for alert in alerts
    ]
    return _render("alerts.html", {"rows": rows}) if rows else "None."


def health_checks_table(checks: Iterable[HealthCheck]) -> SafeString | str:
    """Health checks, newest first, with what each measured."""
    rows = [
        {
            "checked": time_text(check.checked_at),
            "result": "ok" if check.ok else "failed",
            "latency": number_text(check.latency_ms, "ms"),
            "lag": number_text(check.lag_s, "s"),
            "lag_bytes": number_text(check.lag_bytes, "B"),
            "score": number_text(check.score, ""),
            "error": check.error,
        }
        for check in checks
    ]
    if not rows:
        return "No health checks recorded yet."
    return _render("health_checks.html", {"rows": rows})


def failover_steps_table(steps: Iterable[Mapping[str, Any]]) -> SafeString | str:
    """A failover's step log (``[{at, step, ok, detail}, ...]``) as recorded."""
    rows = [
        {
            "at": step.get("at", ""),
            "step": step.get("step", ""),
            "result": "ok" if step.get("ok", True) else "failed",
            "detail": step.get("detail", ""),
        }
        for step in steps
    ]
    return _render("failover_steps.html", {"rows": rows}) if rows else "No steps recorded."
