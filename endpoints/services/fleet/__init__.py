"""Cluster status, health history and operations, as plain data for the MCP server.

Callers (the MCP server, later a dashboard) only parse arguments and shape results:
lookups, validation and the audit trail live here. Every return value is JSON-safe
(datetimes as ISO 8601 strings) and never holds a password or a connection string.
Registry changes are validated as the admin validates them (the model's
``full_clean``) and recorded in the admin's history (``LogEntry``) under the inactive
system user :data:`SYSTEM_USERNAME`; model signals publish them to the routers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Avg, Count, OuterRef, Q, Subquery
from django.utils import timezone

from endpoints import failover as failover_service
from endpoints import health, routing
from endpoints.core.conninfo import ConnectionInfo
from endpoints.core.crypto import redact
from endpoints.core.purposes import ASSISTANT_READ, Purpose
from endpoints.health.probe import ProbeResult, probe_async
from endpoints.models import Cluster, Endpoint, FailoverEvent, HealthCheck, Role
from endpoints.routing.topology import ClusterView

SYSTEM_USERNAME = "pgwarden-mcp"
VIA = "via MCP"
MAX_HISTORY_MINUTES = 7 * 24 * 60
MAX_HISTORY_LIMIT = 1000
ACTIVE_ALERTS_SHOWN = 50
# Database constraints whose violation is about one argument: reported under its name
# rather than as an error of the whole endpoint.
_CONSTRAINT_FIELDS = {
    "endpoint_name_unique_in_cluster": "name",
    "one_enabled_primary_per_cluster": "role",
}


class UnknownEndpoint(ValueError):
    """The cluster has no endpoint of that name."""


class InvalidInput(ValueError):
    """Arguments the registry refuses; ``errors`` maps each argument to its messages."""

    def __init__(self, what: str, errors: dict[str, list[str]]) -> None:
        self.errors = errors
        detail = "; ".join(
            f"{'(all)' if field == NON_FIELD_ERRORS else field}: {' '.join(messages)}"
            for field, messages in errors.items()
        )
        super().__init__(f"invalid {what}: {detail}")


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
        raise _unknown_endpoint(cluster, name)
    return endpoint


def _unknown_endpoint(cluster: Cluster, name: object) -> UnknownEndpoint:
    names = ", ".join(cluster.endpoints.order_by("name").values_list("name", flat=True))
    return UnknownEndpoint(
        f"cluster {cluster.name!r} has no endpoint {name!r} (endpoints: {names or 'none'})"
    )


def _primary_first(endpoints: Iterable[Endpoint]) -> list[Endpoint]:
    return sorted(endpoints, key=lambda e: (e.role != Role.PRIMARY, e.name))


def _enabled_primary(cluster: Cluster) -> Endpoint | None:
    return cluster.endpoints.filter(role=Role.PRIMARY, enabled=True).first()


# Shaping


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _round(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None


def _error(text: str | None) -> str | None:
    # Probes redact already; again here, with the passwords this process knows.
    return redact(text) if text else None


def pool_settings(endpoint: Endpoint) -> dict[str, Any]:
    """The endpoint's pool settings and the cluster's connection timeouts."""
    return {
        "min_size": endpoint.pool_min_size,
        "max_size": endpoint.pool_max_size,
        "timeout_s": endpoint.pool_timeout_s,
        "max_idle_s": endpoint.pool_max_idle_s,
        "max_lifetime_s": endpoint.pool_max_lifetime_s,
        "connect_timeout_s": endpoint.cluster.connect_timeout_s,
        "statement_timeout_ms": endpoint.cluster.statement_timeout_ms,
    }


def endpoint_data(endpoint: Endpoint) -> dict[str, Any]:
    """The endpoint's configuration and last observed status; ``has_password``, never it."""
    return {
        "cluster": endpoint.cluster.name,
        "name": endpoint.name,
        "role": endpoint.role,
        "enabled": endpoint.enabled,
        "weight": endpoint.weight,
        "promotion_priority": endpoint.promotion_priority,
        "zone": endpoint.zone,
        "host": endpoint.host,
        "port": endpoint.port,
        "database": endpoint.dbname,
        "user": endpoint.user,
        "sslmode": endpoint.sslmode,
        "sslrootcert": endpoint.sslrootcert or None,
        "has_password": endpoint.has_password,
        "state": endpoint.state,
        "health_score": endpoint.health_score,
        "in_recovery": endpoint.in_recovery,
        "last_checked_at": _iso(endpoint.last_checked_at),
        "last_error": _error(endpoint.last_error),
        "pool": pool_settings(endpoint),
    }


def failover_event_data(event: FailoverEvent, *, steps: bool = True) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": event.pk,
        "kind": event.kind,
        "outcome": event.outcome,
        "reason": redact(event.reason),
        "from": event.old_primary_name or None,
        "to": event.new_primary_name or None,
        "started_at": _iso(event.started_at),
        "finished_at": _iso(event.finished_at),
    }
    if steps:
        data["steps"] = [dict(step) for step in event.steps or []]
    return data


# Live probes


def _database_entry(endpoint: Endpoint, user: str, result: ProbeResult) -> dict[str, Any]:
    return {
        "name": endpoint.name,
        "role": endpoint.role,
        "host": endpoint.host,
        "port": endpoint.port,
        "database": endpoint.dbname,
        "user": user,
        "sslmode": endpoint.sslmode,
        "enabled": endpoint.enabled,
        "reachable": result.ok,
        "server_version": result.server_version,
        "in_recovery": result.in_recovery,
        "latency_ms": _round(result.latency_ms),
        "connections_in_use": result.connections_in_use,
        "max_connections": result.max_connections,
        "error": _error(result.error),
        "pool": pool_settings(endpoint),
    }


def database_info(cluster: str, *, purpose: Purpose = ASSISTANT_READ) -> dict[str, Any]:
    """Probe every endpoint now, all at once (each bounded by the connect timeout).

    Each probe connects as ``purpose``'s role (the assistant's unless named), with the
    settings its sessions carry, exactly as that purpose's routed queries do.
    """
    found = get_cluster(cluster)
    endpoints = _primary_first(found.endpoints.select_related("cluster"))
    view = routing.get_router(purpose).topology.current().cluster(found.name)
    connections = [_purpose_connection(view, endpoint) for endpoint in endpoints]
    results = asyncio.run(_probe_all(connections, float(found.connect_timeout_s)))
    return {
        "cluster": found.name,
        "endpoints": [
            _database_entry(endpoint, info.user if not isinstance(info, str) else "", result)
            for endpoint, info, result in zip(endpoints, connections, results, strict=True)
        ],
    }


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


# Router fields of an endpoint this process's snapshot does not have yet (just added).
_NOT_ROUTED: dict[str, Any] = {
    "available": False,
    "unusable": None,
    "requests": 0,
    "errors": 0,
    "retries": 0,
    "latency_avg_ms": None,
    "latency_p95_ms": None,
    "circuit": None,
    "pool": None,
}


def _status_entry(endpoint: Endpoint, routed: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "name": endpoint.name,
        "role": endpoint.role,
        "address": f"{endpoint.host}:{endpoint.port}",
        "enabled": endpoint.enabled,
        "state": endpoint.state,
        "weight": endpoint.weight,
        "health_score": endpoint.health_score,
        # The router's view (its snapshot is at most about a second old) ...
        **(routed if routed is not None else _NOT_ROUTED),
        # ... and what the health checks recorded.
        "last_latency_ms": _round(endpoint.last_latency_ms),
        "replication_lag_s": endpoint.replication_lag_s,
        "replication_lag_bytes": endpoint.replication_lag_bytes,
        "in_recovery": endpoint.in_recovery,
        "consecutive_failures": endpoint.consecutive_failures,
        "last_checked_at": _iso(endpoint.last_checked_at),
        "last_error": _error(endpoint.last_error),
        "role_mismatch": endpoint.role_mismatch,
        "fenced_reason": endpoint.fenced_reason or None,
    }


def _active_alerts(cluster: Cluster) -> list[dict[str, Any]]:
    alerts = (
        cluster.alerts.filter(cleared_at__isnull=True)
        .select_related("endpoint")
        .order_by("-raised_at")[:ACTIVE_ALERTS_SHOWN]
    )
    return [
        {
            "key": alert.key,
            "kind": alert.kind,
            "severity": alert.severity,
            "message": redact(alert.message),
            "endpoint": alert.endpoint.name if alert.endpoint is not None else None,
            "since": _iso(alert.raised_at),
        }
        for alert in alerts
    ]


def cluster_status(cluster: str) -> dict[str, Any]:
    """The registry's view of the cluster merged with this process's routing statistics."""
    found = get_cluster(cluster)
    routed = routing.stats(found.name)
    endpoints = _primary_first(found.endpoints.all())
    last = found.failover_events.order_by("-started_at").first()
    primary = next((e for e in endpoints if e.role == Role.PRIMARY and e.enabled), None)
    return {
        "cluster": found.name,
        "primary": primary.name if primary is not None else None,
        "auto_failover": found.auto_failover,
        "read_preference": routed["read_preference"],
        "load_balancing": routed["load_balancing"],
        "topology_version": routed["topology_version"],
        "active_alerts": _active_alerts(found),
        "last_failover": failover_event_data(last, steps=False) if last is not None else None,
        "endpoints": [_status_entry(e, routed["endpoints"].get(e.name)) for e in endpoints],
        "totals": routed["totals"],
    }


# Health history


def _bounded_int(value: Any, argument: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{argument} must be an integer from {low} to {high}, not {value!r}")
    return value


def _check_data(check: HealthCheck) -> dict[str, Any]:
    return {
        "checked_at": _iso(check.checked_at),
        "ok": check.ok,
        "latency_ms": _round(check.latency_ms),
        "lag_s": check.lag_s,
        "lag_bytes": check.lag_bytes,
        "score": check.score,
        "in_recovery": check.in_recovery,
        "connections_in_use": check.connections_in_use,
        "max_connections": check.max_connections,
        "error": _error(check.error),
    }


def health_history(
    cluster: str, endpoint: str, *, since_minutes: int = 60, limit: int = 100
) -> dict[str, Any]:
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
    return {
        "cluster": found.cluster.name,
        "endpoint": found.name,
        "since": _iso(since),
        "checks": [_check_data(check) for check in checks],
        "truncated": count > len(checks),
        "summary": {
            "checks": count,
            "failures": failures,
            "availability_pct": round(100 * (count - failures) / count, 2) if count else None,
            "avg_latency_ms": _round(totals["avg_latency_ms"]),
        },
    }


def _latest_check_entry(endpoint: Endpoint, check: HealthCheck | None) -> dict[str, Any]:
    return {
        "name": endpoint.name,
        "ok": check.ok if check is not None else None,
        "state": endpoint.state,
        "health_score": endpoint.health_score,
        "latency_ms": _round(check.latency_ms) if check is not None else None,
        "error": _error(check.error) if check is not None else None,
        "checked_at": _iso(check.checked_at) if check is not None else None,
    }


def _latest_checks(cluster: Cluster) -> list[dict[str, Any]]:
    """Each enabled endpoint's status and latest health check, in three queries."""
    enabled = cluster.endpoints.filter(enabled=True)
    latest = HealthCheck.objects.filter(endpoint=OuterRef("pk")).order_by("-checked_at")
    check_ids = dict(
        enabled.annotate(check_id=Subquery(latest.values("pk")[:1])).values_list("pk", "check_id")
    )
    checks = HealthCheck.objects.in_bulk([pk for pk in check_ids.values() if pk is not None])
    return [
        _latest_check_entry(endpoint, checks.get(check_ids.get(endpoint.pk)))
        for endpoint in _primary_first(enabled)
    ]


def check_health(cluster: str) -> dict[str, Any]:
    """Sweep the cluster now, as a scheduled sweep does: probe, record, alert, react.

    Skipped (``swept`` false, ``skipped_because`` says why) when another sweep of the
    cluster holds its lock; the endpoints then show their latest recorded check.
    """
    found = get_cluster(cluster)
    report = health.sweep_exclusively(found.pk)
    return {
        "cluster": found.name,
        "swept": report.swept,
        "skipped_because": report.skipped_because or None,
        "elapsed_s": report.elapsed_s if report.swept else None,
        "endpoints": _latest_checks(found),
    }


# Failover


def _plan_data(cluster: Cluster, plan: failover_service.FailoverPlan) -> dict[str, Any]:
    reference = plan.reference_lsn
    return {
        "cluster": cluster.name,
        "primary": plan.primary,
        "primary_answers": plan.primary_answers,
        "candidate": plan.candidate,
        "candidate_lag_bytes": plan.candidate_lag_bytes,
        "reason": redact(plan.reason),
        "ranking": list(plan.ranking),
        "excluded": {name: redact(why) for name, why in plan.excluded.items()},
        "lag_bytes": dict(plan.lag_bytes),
        "reference_lsn": failover_service.format_lsn(reference) if reference is not None else None,
        "description": redact(failover_service.describe_plan(plan)),
    }


def plan_failover(cluster: str, *, to: str | None = None) -> dict[str, Any]:
    """Probe the cluster and say what a failover would do; changes nothing."""
    found = get_cluster(cluster)
    return _plan_data(found, failover_service.plan_failover(found, to=to))


def failover(
    cluster: str, *, to: str | None = None, switchover: bool = False, actor: str = "mcp"
) -> dict[str, Any]:
    """Promote ``to`` (or the best replica) now, as ``manage.py failover --yes`` does.

    The plan comes first: when no replica can be promoted, :class:`FailoverError` is
    raised and nothing is recorded. Otherwise the FailoverEvent is returned whatever its
    outcome. FailoverError and its subclasses (FailoverInProgress, UnknownEndpoint,
    PrimaryUnavailable) propagate.
    """
    if not isinstance(actor, str) or not actor.strip():
        raise ValueError(f"actor must be a non-empty string, not {actor!r}")
    found = get_cluster(cluster)
    plan = failover_service.plan_failover(found, to=to)
    what = "switchover" if switchover else "failover"
    if plan.candidate is None:
        raise failover_service.FailoverError(
            f"no replica of cluster {found.name!r} can be promoted, nothing changed: "
            f"{redact(plan.reason)}"
        )
    reason = f"manual {what} by {actor}"
    if switchover:
        event = failover_service.switchover(found, to=plan.candidate, reason=reason)
    else:
        event = failover_service.fail_over(
            found, to=plan.candidate, kind=FailoverEvent.Kind.MANUAL, reason=reason
        )
    return failover_event_data(event)


# Registry changes


def _system_user() -> AbstractBaseUser:
    """The user the admin history shows for changes made here: inactive, no password."""
    model = get_user_model()
    lookup = {model.USERNAME_FIELD: SYSTEM_USERNAME}
    user = model._default_manager.filter(**lookup).first()
    if user is not None:
        return user
    user = model(**lookup, is_active=False)
    user.set_unusable_password()
    try:
        with transaction.atomic():
            user.save()
    except IntegrityError:  # created meanwhile by another process
        return model._default_manager.get(**lookup)
    return user


def _log(endpoint: Endpoint, action: int, message: str) -> None:
    LogEntry.objects.log_actions(
        user_id=_system_user().pk,
        queryset=[endpoint],
        action_flag=action,
        change_message=message,
        single_object=True,
    )


def _field_errors(exc: ValidationError) -> dict[str, list[str]]:
    errors = {field: list(messages) for field, messages in exc.message_dict.items()}
    general = errors.pop(NON_FIELD_ERRORS, [])
    for constraint in Endpoint._meta.constraints:
        field = _CONSTRAINT_FIELDS.get(constraint.name)
        message = constraint.get_violation_error_message()
        if field is not None and message in general:
            general.remove(message)
            # Model.clean() may have said the same thing about that field, better.
            errors.setdefault(field, [message])
    if general:
        errors[NON_FIELD_ERRORS] = general
    return errors


def _validate(endpoint: Endpoint, errors: dict[str, list[str]] | None = None) -> None:
    """The admin's validation (``full_clean``); raises InvalidInput naming each argument."""
    errors = dict(errors or {})
    try:
        endpoint.full_clean()
    except ValidationError as exc:
        for field, messages in _field_errors(exc).items():
            errors.setdefault(field, []).extend(messages)
    if errors:
        raise InvalidInput("endpoint", errors)


def _connection_settings(
    template: Endpoint | None, given: dict[str, str | None]
) -> tuple[dict[str, Any], list[str]]:
    """The connection settings of a new endpoint, and which came from the cluster's primary.

    Settings left out (``None``) come from ``template``; without one, the model's defaults.
    An inherited sslmode brings its root certificate along, unless one is given.
    """
    values = {field: value for field, value in given.items() if value is not None}
    inherited: list[str] = []
    if template is not None:
        for field in ("dbname", "user", "sslmode"):
            if given[field] is None:
                values[field] = getattr(template, field)
                inherited.append(field)
        if given["sslmode"] is None and given["sslrootcert"] is None:
            values["sslrootcert"] = template.sslrootcert
    return values, inherited


def add_endpoint(
    cluster: str,
    *,
    name: str,
    host: str,
    port: int = 5432,
    role: str = Role.REPLICA,
    weight: int = 100,
    dbname: str | None = None,
    user: str | None = None,
    password: str | None = None,
    enabled: bool = True,
    promotion_priority: int = 0,
    sslmode: str | None = None,
    sslrootcert: str | None = None,
    zone: str = "",
) -> dict[str, Any]:
    """Register a new endpoint, validated as the admin validates it, and log it.

    ``dbname``, ``user`` and ``sslmode`` (with its root certificate) left out are taken
    from the endpoint already registered at the same host and port, else from the
    cluster's enabled primary. A stored password is copied only from an endpoint at the
    same address: a password never goes to an address it was not registered for, so a
    new address needs its own (``password``; ``""`` for none). Raises
    :class:`InvalidInput`.
    """
    found = get_cluster(cluster)
    same_address = _registered_at(found, host, port)
    template = same_address or _enabled_primary(found)
    connection, inherited = _connection_settings(
        template, {"dbname": dbname, "user": user, "sslmode": sslmode, "sslrootcert": sslrootcert}
    )
    endpoint = Endpoint(
        cluster=found,
        name=name,
        host=host,
        port=port,
        role=role,
        weight=weight,
        enabled=enabled,
        promotion_priority=promotion_priority,
        zone=zone,
        **connection,
    )
    errors: dict[str, list[str]] = {}
    if password is None and same_address is not None:
        # The token itself: the password is never decrypted to be copied.
        endpoint.password_encrypted = same_address.password_encrypted
        inherited.append("password")
    elif password is None:
        if template is not None and template.has_password:
            errors["password"] = [
                f"{host}:{port} is a new address in cluster {found.name!r}: give its password "
                "(a stored password is only reused for the address it was registered for)"
            ]
    elif isinstance(password, str):
        endpoint.set_password(password)
    else:
        errors["password"] = [f"must be a string, not {type(password).__name__}"]
    _validate(endpoint, errors)
    message = f"Added {VIA}: {endpoint.role} at {endpoint.host}:{endpoint.port}"
    if template is not None and inherited:
        source = "endpoint" if template is same_address else "primary"
        message += f"; {', '.join(inherited)} from {source} {template.name!r}"
    try:
        with transaction.atomic():
            endpoint.save()
            _log(endpoint, ADDITION, message + ".")
    except IntegrityError:
        _validate(endpoint)  # added meanwhile with the same name (or primary role): say so
        raise
    return endpoint_data(endpoint)


def _registered_at(cluster: Cluster, host: Any, port: Any) -> Endpoint | None:
    """The endpoint of ``cluster`` at exactly this host and port, if there is one."""
    if not isinstance(host, str) or isinstance(port, bool) or not isinstance(port, int):
        return None
    return cluster.endpoints.filter(host=host, port=port).order_by("pk").first()


def _locked_endpoint(cluster: Cluster, name: str) -> Endpoint:
    # Row lock on PostgreSQL (a no-op on SQLite): a failover changing its role waits.
    endpoint = (
        Endpoint.objects.select_for_update()
        .select_related("cluster")
        .filter(cluster=cluster, name=name)
        .first()
        if isinstance(name, str)
        else None
    )
    if endpoint is None:
        raise _unknown_endpoint(cluster, name)
    return endpoint


def remove_endpoint(cluster: str, name: str) -> dict[str, Any]:
    """Delete an endpoint (and its health history) and log it; never the primary."""
    found = get_cluster(cluster)
    with transaction.atomic():
        endpoint = _locked_endpoint(found, name)
        if endpoint.role == Role.PRIMARY and endpoint.enabled:
            raise ValueError(
                f"{endpoint.name!r} is the primary of cluster {found.name!r} and cannot be "
                "removed: fail over or switch over to a replica first"
            )
        # Logged first, as the admin does: the entry needs the row's primary key.
        _log(
            endpoint,
            DELETION,
            f"Deleted {VIA}: {endpoint.role} at {endpoint.host}:{endpoint.port}.",
        )
        endpoint.delete()
    return {"cluster": found.name, "removed": endpoint.name}


def set_endpoint(
    cluster: str, name: str, *, weight: int | None = None, enabled: bool | None = None
) -> dict[str, Any]:
    """Change an endpoint's weight and/or enabled flag, validated and logged.

    Returns the endpoint's data plus ``changes``: ``{field: {"from", "to"}}`` (empty
    when the values were already set; nothing is saved or logged then).
    """
    if weight is None and enabled is None:
        raise ValueError("set_endpoint needs weight or enabled (or both)")
    found = get_cluster(cluster)
    with transaction.atomic():
        endpoint = _locked_endpoint(found, name)
        before = {"weight": endpoint.weight, "enabled": endpoint.enabled}
        if weight is not None:
            endpoint.weight = weight
        if enabled is not None:
            endpoint.enabled = enabled
        _validate(endpoint)  # also turns "5" into 5 and "false" into False
        changes = {
            field: {"from": old, "to": getattr(endpoint, field)}
            for field, old in before.items()
            if getattr(endpoint, field) != old
        }
        if changes:
            # Only these fields: a full save would overwrite what a sweep records meanwhile.
            endpoint.save(update_fields=[*changes, "updated_at"])
            described = "; ".join(f"{f} {c['from']} → {c['to']}" for f, c in changes.items())
            _log(endpoint, CHANGE, f"Changed {VIA}: {described}.")
    return {**endpoint_data(endpoint), "changes": changes}
