"""Registering clusters from code (make run, docker-compose, scripts): idempotent.

Everything is validated before anything is written, so one bad endpoint leaves
the registry as it was. Registering again refreshes what the caller states and
nothing else: role, weight and enabled belong to operators and failovers once
an endpoint exists, and a setting the caller leaves out (``None``) keeps its
stored value, so a script that omits ``sslmode`` cannot downgrade a
verify-full endpoint, nor one that omits the password erase it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import transaction

from endpoints.core.conninfo import StoredRole
from endpoints.core.crypto import DecryptionError, Secret
from endpoints.core.vocabulary import SslMode, values
from endpoints.models import Cluster, Endpoint, Role

logger = logging.getLogger("pgwarden.registry")

# The name ``make run`` registers its local cluster under (``manage.py run_local``).
LOCAL_CLUSTER_NAME = "local"

# Always stated by a spec: where the server is.
ADDRESS_FIELDS = ("host", "port")
# Stated or not (None): new endpoints get the model default, existing ones keep theirs.
OPTIONAL_FIELDS = ("dbname", "user", "sslmode", "sslrootcert", "zone")


@dataclass(frozen=True)
class EndpointSpec:
    name: str
    host: str
    port: int
    # Only a new endpoint takes it: afterwards roles change by failover, switchover or the admin.
    role: str = Role.REPLICA
    dbname: str | None = None
    user: str | None = None
    # Secret("") states "no password"; None leaves the stored one alone.
    password: Secret | None = None
    sslmode: str | None = None
    sslrootcert: str | None = None
    zone: str | None = None


@dataclass(frozen=True)
class RoleSpec:
    """An assistant role of the cluster: its name, and its password (None keeps the stored one).

    ``RoleSpec("")`` removes the role (and its password) from the registry.
    """

    user: str
    password: Secret | None = None


@dataclass
class Registration:
    cluster: Cluster
    cluster_created: bool = False
    cluster_changes: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    # Endpoint name -> names of the fields that changed (never their values).
    changes: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.cluster_created or self.cluster_changes or self.created or self.updated)

    def summary(self) -> str:
        if self.cluster_created:
            state = "created"
        elif self.cluster_changes:
            state = f"updated ({', '.join(self.cluster_changes)})"
        else:
            state = "unchanged"
        lines = [f"cluster {self.cluster.name!r} {state}"]
        if self.created:
            lines.append(f"  created: {', '.join(self.created)}")
        if self.updated:
            shown = [f"{name} ({', '.join(self.changes[name])})" for name in self.updated]
            lines.append(f"  updated: {', '.join(shown)}")
        if self.unchanged:
            lines.append(f"  unchanged: {', '.join(self.unchanged)}")
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)


@transaction.atomic
def register_cluster(
    name: str,
    endpoints: Sequence[EndpointSpec],
    *,
    description: str | None = None,
    assistant: RoleSpec | None = None,
    assistant_write: RoleSpec | None = None,
) -> Registration:
    """Create or update cluster ``name`` and its endpoints; never duplicates.

    Endpoints not named are left alone. ``assistant`` and ``assistant_write`` name the
    roles of the MCP server's read and write tools (None leaves them as stored). Raises
    ``ValidationError`` whose keys name the cluster or endpoint and the field
    (``"endpoint 'pg2' port"``) when anything is invalid; nothing is written then.
    """
    specs = list(endpoints)
    errors: dict[str, list[str]] = {}
    _check_specs(specs, errors)
    registration, existing = _lock_cluster(name, description)
    cluster = registration.cluster
    for role_spec, writes in ((assistant, False), (assistant_write, True)):
        if role_spec is not None:
            registration.cluster_changes.extend(_apply_role(cluster, role_spec, writes=writes))
    if registration.cluster_created or registration.cluster_changes:
        _collect(errors, f"cluster {name!r}", cluster.full_clean)
    to_save = _stage_endpoints(specs, existing, registration, errors)
    if errors:
        raise ValidationError(errors)
    _save(registration, to_save)
    logger.info("registered %s", registration.summary().replace("\n", ";"))
    return registration


def _lock_cluster(name: str, description: str | None) -> tuple[Registration, dict[str, Endpoint]]:
    """Cluster ``name`` (new and unsaved if absent) and its endpoints, locked for update."""
    # Locked (on PostgreSQL) so a failover or a second registration running meanwhile waits
    # for this one instead of interleaving with it.
    cluster = Cluster.objects.select_for_update().filter(name=name).first()
    if cluster is None:
        cluster = Cluster(name=name, description=description or "")
        return Registration(cluster, cluster_created=True), {}
    registration = Registration(cluster)
    if description is not None and description != cluster.description:
        cluster.description = description
        registration.cluster_changes.append("description")
    existing = {
        endpoint.name: endpoint
        for endpoint in Endpoint.objects.select_for_update().filter(cluster=cluster)
    }
    return registration, existing


def _stage_endpoints(
    specs: Sequence[EndpointSpec],
    existing: dict[str, Endpoint],
    registration: Registration,
    errors: dict[str, list[str]],
) -> list[tuple[Endpoint, list[str]]]:
    """Apply ``specs`` in memory and validate; the endpoints to save, with their changes."""
    to_save: list[tuple[Endpoint, list[str]]] = []
    for spec in specs:
        endpoint = existing.get(spec.name)
        if endpoint is None:
            endpoint = Endpoint(cluster=registration.cluster, name=spec.name, role=spec.role)
            changes = _apply(endpoint, spec)
            registration.created.append(spec.name)
        else:
            changes = _apply(endpoint, spec)
            if not changes:
                registration.unchanged.append(spec.name)
            else:
                registration.updated.append(spec.name)
                registration.changes[spec.name] = changes
            if endpoint.role != spec.role:
                registration.notes.append(
                    f"{spec.name} stays {endpoint.role} (registered as {spec.role}): roles of "
                    "existing endpoints change only by failover, switchover or the admin"
                )
            if not changes:
                continue
        # A new cluster has no primary key yet: its endpoints' foreign key, and the
        # constraints on it, cannot be checked until it is saved (_check_specs covers them).
        # A bad role was reported by _check_specs already, in words more useful than "not a
        # valid choice".
        exclude = ["cluster"] if registration.cluster_created else []
        if spec.role not in values(Role):
            exclude.append("role")
        _collect(errors, f"endpoint {spec.name!r}", partial(endpoint.full_clean, exclude=exclude))
        to_save.append((endpoint, changes))
    return to_save


def _save(registration: Registration, to_save: list[tuple[Endpoint, list[str]]]) -> None:
    """Write the cluster (if new or changed) and the staged endpoints' changed fields."""
    cluster = registration.cluster
    if registration.cluster_created:
        cluster.save()
    elif registration.cluster_changes:
        cluster.save(update_fields=[*registration.cluster_changes, "updated_at"])
        registration.cluster_changes = [
            _SHOWN_AS.get(change, change) for change in registration.cluster_changes
        ]
    for endpoint, changes in to_save:
        if endpoint.pk is None:
            endpoint.cluster = cluster  # now saved: sets cluster_id
            endpoint.save()
        else:
            # Only the stated fields: a full save would write back the health status and
            # role read above, undoing whatever a health check or failover wrote since.
            columns = ["password_encrypted" if name == "password" else name for name in changes]
            endpoint.save(update_fields=[*columns, "updated_at"])


class RegistrableNode(Protocol):
    """One server of a local cluster, as registering it needs it."""

    @property
    def name(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def role(self) -> str: ...


class RegistrableCluster(Protocol):
    """A local cluster as registering it needs it: nodes, application login, assistant roles.

    ``endpoints.devstack.localcluster.LocalPostgresCluster`` is one; services do not
    import devstack, so it is described here instead.
    """

    @property
    def nodes(self) -> Sequence[RegistrableNode]: ...
    @property
    def dbname(self) -> str: ...
    @property
    def user(self) -> str: ...
    @property
    def password(self) -> str: ...
    @property
    def assistant_user(self) -> str: ...
    @property
    def assistant_password(self) -> str: ...
    @property
    def assistant_write_user(self) -> str: ...
    @property
    def assistant_write_password(self) -> str: ...


def register_local_cluster(
    cluster: RegistrableCluster, name: str = LOCAL_CLUSTER_NAME
) -> Registration:
    """Register (or refresh) the local cluster's endpoints and assistant roles."""
    specs = [
        EndpointSpec(
            name=node.name,
            host=node.host,
            port=node.port,
            role=Role.PRIMARY if node.role == Role.PRIMARY else Role.REPLICA,
            dbname=cluster.dbname,
            user=cluster.user,
            password=Secret(cluster.password),
            sslmode=SslMode.DISABLE,
            zone="local",
        )
        for node in cluster.nodes
    ]
    return register_cluster(
        name,
        specs,
        description="Local replicated cluster started by make run (var/).",
        assistant=RoleSpec(cluster.assistant_user, Secret(cluster.assistant_password)),
        assistant_write=RoleSpec(
            cluster.assistant_write_user, Secret(cluster.assistant_write_password)
        ),
    )


def _check_specs(specs: Sequence[EndpointSpec], errors: dict[str, list[str]]) -> None:
    """What the models cannot check one row at a time: the set of endpoints given."""
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            errors.setdefault(f"endpoint {spec.name!r}", []).append(
                "The name is given twice; endpoint names are unique within a cluster."
            )
        seen.add(spec.name)
        if spec.role not in values(Role):
            errors.setdefault(f"endpoint {spec.name!r} role", []).append(
                f"{spec.role!r} is not a role; use one of {', '.join(values(Role))}."
            )
    primaries = [spec.name for spec in specs if spec.role == Role.PRIMARY]
    if len(primaries) > 1:
        errors.setdefault("endpoints", []).append(
            f"{len(primaries)} endpoints are given as primary ({', '.join(primaries)}); "
            "a cluster has at most one."
        )


def _apply(endpoint: Endpoint, spec: EndpointSpec) -> list[str]:
    """Copy what ``spec`` states onto ``endpoint``; the names of the fields that changed."""
    new = endpoint.pk is None
    changes: list[str] = []
    for attr in ADDRESS_FIELDS + OPTIONAL_FIELDS:
        value = getattr(spec, attr)
        if value is not None and getattr(endpoint, attr) != value:
            setattr(endpoint, attr, value)
            changes.append(attr)
    if spec.password is not None and _stored_password(endpoint) != spec.password:
        endpoint.set_password(spec.password.reveal())
        changes.append("password")
    return ["new"] if new else changes


# Cluster fields as the summary names them (never their values).
_SHOWN_AS = {
    "assistant_user": "assistant role",
    "assistant_password_encrypted": "assistant password",
    "assistant_write_user": "assistant write role",
    "assistant_write_password_encrypted": "assistant write password",
}


def _apply_role(cluster: Cluster, spec: RoleSpec, *, writes: bool) -> list[str]:
    """Copy ``spec`` onto ``cluster``; the names of the fields that changed."""
    user_field = "assistant_write_user" if writes else "assistant_user"
    token_field = f"{user_field.removesuffix('_user')}_password_encrypted"
    changes: list[str] = []
    if getattr(cluster, user_field) != spec.user:
        setattr(cluster, user_field, spec.user)
        changes.append(user_field)
    if not spec.user:  # no role: no password either
        if getattr(cluster, token_field):
            setattr(cluster, token_field, "")
            changes.append(token_field)
        return changes
    stored = StoredRole(spec.user, getattr(cluster, token_field))
    if spec.password is not None and _stored_role_password(stored) != spec.password:
        cluster.set_assistant_password(spec.password.reveal(), writes=writes)
        changes.append(token_field)
    return changes


def _stored_role_password(role: StoredRole) -> Secret | None:
    try:
        return role.password()
    except DecryptionError:
        return None  # encrypted with a key since removed: registering repairs it


def _stored_password(endpoint: Endpoint) -> Secret | None:
    try:
        return endpoint.get_password()
    except DecryptionError:
        return None  # encrypted with a key since removed: registering repairs it


def _collect(errors: dict[str, list[str]], subject: str, check: Callable[[], None]) -> None:
    """Run ``check``; file its ValidationError under ``subject`` and the field names."""
    try:
        check()
    except ValidationError as exc:
        if not hasattr(exc, "error_dict"):
            errors.setdefault(subject, []).extend(exc.messages)
            return
        for field_name, messages in exc.message_dict.items():
            key = subject if field_name == NON_FIELD_ERRORS else f"{subject} {field_name}"
            errors.setdefault(key, []).extend(messages)
