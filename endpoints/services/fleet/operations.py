"""What the fleet service changes: failovers, switchovers and the endpoint registry.

Registry changes are validated as the admin validates them (the model's ``full_clean``)
and recorded in the admin's history (``LogEntry``) under the inactive system user
:data:`SYSTEM_USERNAME`; model signals publish them to the routers. Refusals are
:class:`InvalidInput` (per argument), ``ValueError`` and :class:`FailoverError`.
"""

from __future__ import annotations

from typing import Any

from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import IntegrityError, transaction

from endpoints import failover as failover_service
from endpoints.core.crypto import redact
from endpoints.core.vocabulary import FailoverKind, Role
from endpoints.failover import FailoverError
from endpoints.models import Cluster, Endpoint
from endpoints.services.fleet.records import (
    EndpointChanged,
    EndpointRecord,
    EndpointRemoved,
    FailoverEventRecord,
    FailoverPlanRecord,
    PauseRecord,
    endpoint_changed,
    endpoint_record,
    failover_event,
    pause_record,
)
from endpoints.services.fleet.status import get_cluster, unknown_endpoint

SYSTEM_USERNAME = "pgwarden-mcp"
VIA = "via MCP"
# Database constraints whose violation is about one argument: reported under its name
# rather than as an error of the whole endpoint.
_CONSTRAINT_FIELDS = {
    "endpoint_name_unique_in_cluster": "name",
    "one_enabled_primary_per_cluster": "role",
}


class InvalidInput(ValueError):
    """Arguments the registry refuses; ``errors`` maps each argument to its messages."""

    def __init__(self, what: str, errors: dict[str, list[str]]) -> None:
        self.errors = errors
        detail = "; ".join(
            f"{'(all)' if field == NON_FIELD_ERRORS else field}: {' '.join(messages)}"
            for field, messages in errors.items()
        )
        super().__init__(f"invalid {what}: {detail}")


def _enabled_primary(cluster: Cluster) -> Endpoint | None:
    return cluster.endpoints.filter(role=Role.PRIMARY, enabled=True).first()


# Failover


def _plan_record(cluster: Cluster, plan: failover_service.FailoverPlan) -> FailoverPlanRecord:
    reference = plan.reference_lsn
    return FailoverPlanRecord(
        cluster=cluster.name,
        primary=plan.primary,
        primary_answers=plan.primary_answers,
        candidate=plan.candidate,
        candidate_lag_bytes=plan.candidate_lag_bytes,
        reason=redact(plan.reason),
        ranking=list(plan.ranking),
        excluded={name: redact(why) for name, why in plan.excluded.items()},
        lag_bytes=dict(plan.lag_bytes),
        reference_lsn=failover_service.format_lsn(reference) if reference is not None else None,
        description=redact(failover_service.describe_plan(plan)),
    )


def plan_failover(cluster: str, *, to: str | None = None) -> FailoverPlanRecord:
    """Probe the cluster and say what a failover would do; changes nothing."""
    found = get_cluster(cluster)
    return _plan_record(found, failover_service.plan_failover(found, to=to))


def failover(
    cluster: str, *, to: str | None = None, switchover: bool = False, actor: str = "mcp"
) -> FailoverEventRecord:
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
        raise FailoverError(
            f"no replica of cluster {found.name!r} can be promoted, nothing changed: "
            f"{redact(plan.reason)}"
        )
    reason = f"manual {what} by {actor}"
    if switchover:
        event = failover_service.switchover(found, to=plan.candidate, reason=reason)
    else:
        event = failover_service.fail_over(
            found, to=plan.candidate, kind=FailoverKind.MANUAL, reason=reason
        )
    return failover_event(event)


def pause_failover(cluster: str, reason: str = "", *, actor: str = "mcp") -> PauseRecord:
    """Pause automatic failover of ``cluster`` (maintenance); checks and alerts go on.

    Idempotent: a paused cluster keeps its pause time (and its reason, unless one is
    given). The reason is stored with who paused it: ``"<reason> (by <actor>)"``.
    """
    if not isinstance(reason, str):
        raise ValueError(f"reason must be a string, not {type(reason).__name__}")
    found = get_cluster(cluster)
    was_paused = found.paused
    given = " ".join(reason.split())
    # No reason given: a pause under way keeps its own ("" changes nothing).
    default = "" if was_paused else f"paused by {actor}"
    stored = failover_service.pause(found, reason=f"{given} (by {actor})" if given else default)
    return pause_record(
        stored,
        changed=not was_paused,
        message=f"automatic failover of {stored.name} {stored.pause_text()}",
    )


def resume_failover(cluster: str) -> PauseRecord:
    """Resume automatic failover of ``cluster``: the next sweep may fail over at once."""
    found = get_cluster(cluster)
    was = found.pause_text()
    stored = failover_service.resume(found)
    message = (
        f"automatic failover of {stored.name} resumed (was {was})"
        if was
        else f"automatic failover of {stored.name} was not paused: nothing changed"
    )
    return pause_record(stored, changed=bool(was), message=message)


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
) -> EndpointRecord:
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
    errors = _set_password(endpoint, password, same_address, template)
    if same_address is not None and password is None:
        inherited.append("password")
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
    return endpoint_record(endpoint)


def _set_password(
    endpoint: Endpoint, password: Any, same_address: Endpoint | None, template: Endpoint | None
) -> dict[str, list[str]]:
    """Give the new endpoint its password: the one given, else its address's; the errors.

    A stored password is copied only from an endpoint at the same address (as its
    encrypted token: it is never decrypted to be copied).
    """
    if password is None and same_address is not None:
        endpoint.password_encrypted = same_address.password_encrypted
    elif password is None:
        if template is not None and template.has_password:
            address = f"{endpoint.host}:{endpoint.port}"
            return {
                "password": [
                    f"{address} is a new address in cluster {endpoint.cluster.name!r}: give its "
                    "password (a stored password is only reused for the address it was "
                    "registered for)"
                ]
            }
    elif isinstance(password, str):
        endpoint.set_password(password)
    else:
        return {"password": [f"must be a string, not {type(password).__name__}"]}
    return {}


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
        raise unknown_endpoint(cluster, name)
    return endpoint


def remove_endpoint(cluster: str, name: str) -> EndpointRemoved:
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
    return EndpointRemoved(cluster=found.name, removed=endpoint.name)


def set_endpoint(
    cluster: str, name: str, *, weight: int | None = None, enabled: bool | None = None
) -> EndpointChanged:
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
    return endpoint_changed(endpoint, changes)
