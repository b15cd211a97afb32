"""The fleet service's typed results, and how registry rows become them.

Every value is JSON-safe (datetimes as ISO 8601 strings, errors redacted again with the
passwords this process knows); no result holds a password or a connection string
(``has_password`` says whether there is one).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from pydantic import Field

from endpoints.core.crypto import redact
from endpoints.core.vocabulary import FailoverKind, FailoverOutcome, Role, SslMode, State
from endpoints.models import Cluster, Endpoint, FailoverEvent
from endpoints.services.results import Answer, Result, json_name

# Shaping


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _round(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None


def _error(text: str | None) -> str | None:
    # Probes redact already; again here, with the passwords this process knows.
    return redact(text) if text else None


def _primary_first(endpoints: Iterable[Endpoint]) -> list[Endpoint]:
    return sorted(endpoints, key=lambda e: (e.role != Role.PRIMARY, e.name))


# Results


class PoolSettings(Result):
    """An endpoint's pool settings and its cluster's connection timeouts."""

    min_size: int
    max_size: int
    timeout_s: float
    max_idle_s: float
    max_lifetime_s: float
    connect_timeout_s: int
    statement_timeout_ms: int


class EndpointRecord(Answer):
    """An endpoint's configuration and last observed status."""

    cluster: str
    name: str
    role: Role
    enabled: bool
    weight: int
    promotion_priority: int
    zone: str
    host: str
    port: int
    database: str
    user: str
    sslmode: SslMode
    sslrootcert: str | None
    has_password: bool
    state: State
    health_score: int | None
    in_recovery: bool | None
    last_checked_at: str | None
    last_error: str | None
    pool: PoolSettings


class EndpointChanged(EndpointRecord):
    """The endpoint after ``set_endpoint``, and what changed (empty: nothing was saved)."""

    changes: dict[str, dict[str, Any]] = Field(
        description='Per changed field: {"from": old value, "to": new value}.'
    )


class EndpointRemoved(Answer):
    cluster: str
    removed: str


class FailoverEventRecord(Answer):
    """A failover or switchover as recorded, whatever its outcome."""

    id: int
    kind: FailoverKind
    outcome: FailoverOutcome
    reason: str
    from_: str | None = json_name("from", description="The primary before.")
    to: str | None = Field(description="The primary promoted.")
    started_at: str | None
    finished_at: str | None
    steps: list[dict[str, Any]] | None = Field(default=None, exclude_if=lambda v: v is None)


class FailoverPlanRecord(Answer):
    """What a failover would do now; nothing changed."""

    cluster: str
    primary: str | None
    primary_answers: bool | None
    candidate: str | None
    candidate_lag_bytes: int | None
    reason: str
    ranking: list[str]
    excluded: dict[str, str] = Field(description="Replica -> why it cannot be promoted.")
    lag_bytes: dict[str, int]
    reference_lsn: str | None
    description: str


class PauseRecord(Answer):
    """Whether automatic failover of a cluster is paused for maintenance, after a change."""

    cluster: str
    paused: bool
    paused_since: str | None = Field(description="When the pause began (ISO 8601), or null.")
    pause_reason: str
    auto_failover: bool = Field(description="The cluster's automatic failover setting.")
    fails_over_automatically: bool = Field(
        description="Automatic failover is on and not paused: a primary that goes down is replaced."
    )
    changed: bool = Field(description="False when the cluster already was in that state.")
    message: str


def pause_record(cluster: Cluster, *, changed: bool, message: str) -> PauseRecord:
    """The cluster's pause as stored, and what the call did."""
    return PauseRecord(
        cluster=cluster.name,
        paused=cluster.paused,
        paused_since=_iso(cluster.paused_at) if cluster.paused else None,
        pause_reason=cluster.pause_reason if cluster.paused else "",
        auto_failover=cluster.auto_failover,
        fails_over_automatically=cluster.fails_over_automatically,
        changed=changed,
        message=message,
    )


def pool_settings(endpoint: Endpoint) -> PoolSettings:
    """The endpoint's pool settings and the cluster's connection timeouts."""
    return PoolSettings(
        min_size=endpoint.pool_min_size,
        max_size=endpoint.pool_max_size,
        timeout_s=endpoint.pool_timeout_s,
        max_idle_s=endpoint.pool_max_idle_s,
        max_lifetime_s=endpoint.pool_max_lifetime_s,
        connect_timeout_s=endpoint.cluster.connect_timeout_s,
        statement_timeout_ms=endpoint.cluster.statement_timeout_ms,
    )


def _endpoint_fields(endpoint: Endpoint) -> dict[str, Any]:
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


def endpoint_record(endpoint: Endpoint) -> EndpointRecord:
    """The endpoint's configuration and last observed status; ``has_password``, never it."""
    return EndpointRecord(**_endpoint_fields(endpoint))


def endpoint_changed(endpoint: Endpoint, changes: dict[str, dict[str, Any]]) -> EndpointChanged:
    return EndpointChanged(**_endpoint_fields(endpoint), changes=changes)


def failover_event(event: FailoverEvent, *, steps: bool = True) -> FailoverEventRecord:
    return FailoverEventRecord(
        id=event.pk,
        kind=FailoverKind(event.kind),
        outcome=FailoverOutcome(event.outcome),
        reason=redact(event.reason),
        from_=event.old_primary_name or None,
        to=event.new_primary_name or None,
        started_at=_iso(event.started_at),
        finished_at=_iso(event.finished_at),
        steps=[dict(step) for step in event.steps or []] if steps else None,
    )


def failover_event_data(event: FailoverEvent, *, steps: bool = True) -> dict[str, Any]:
    """:func:`failover_event` as JSON (the dashboard's)."""
    return failover_event(event, steps=steps).as_json()
