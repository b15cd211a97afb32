"""The per-process view of clusters and endpoints that the router works from.

The router must not query the control database on every request, so each
process keeps an immutable :class:`Snapshot` and replaces it when the
*topology version* changes. The version is a counter in Redis
(:data:`VERSION_KEY`): every committed change to a cluster or endpoint (admin
save, registry, health sweep, failover) increments it through
:func:`notify_changed`, and each process compares it with its own at most every
:data:`VERSION_CHECK_INTERVAL_S`, so a failover performed by a Celery worker
redirects writes in every other process within a second.

Safety nets: when Redis cannot be reached the snapshot is reloaded from the
database every :data:`REDIS_DOWN_RELOAD_S`, and in any case every
:data:`MAX_SNAPSHOT_AGE_S`, so a lost increment cannot leave a process on a
stale view for long.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import redis
from django.db import transaction
from django.db.models.signals import post_delete, post_save

from endpoints import coordination
from endpoints.core.balancing import Candidate
from endpoints.core.conninfo import ConnectionInfo, StoredRole
from endpoints.core.crypto import DecryptionError, Secret
from endpoints.core.purposes import (
    ASSISTANT_APPLICATION_NAME,
    OPERATIONS,
    AssistantLimits,
    Purpose,
    session_settings,
)
from endpoints.core.retry import RetryPolicy

logger = logging.getLogger("pgwarden.topology")

VERSION_KEY = coordination.TOPOLOGY_VERSION_KEY
VERSION_CHECK_INTERVAL_S = 0.25
REDIS_DOWN_RELOAD_S = 1.0
MAX_SNAPSHOT_AGE_S = 30.0
# Short: this runs inside requests, and a hung Redis must not stall them.
REDIS_TIMEOUT_S = coordination.REQUEST_TIMEOUT_S


@dataclass(frozen=True)
class PoolSettings:
    min_size: int
    max_size: int
    timeout_s: float
    max_idle_s: float
    max_lifetime_s: float


@dataclass(frozen=True)
class EndpointView:
    """What routing needs to know about one endpoint, detached from the ORM."""

    id: int
    cluster: str
    name: str
    role: str
    enabled: bool
    state: str
    weight: int
    zone: str
    in_recovery: bool | None
    lag_s: float | None
    lag_bytes: int | None
    latency_ms: float | None
    health_score: int | None
    address: str
    pool: PoolSettings
    # None when the stored password cannot be decrypted; ``unusable`` says why.
    connection: ConnectionInfo | None = field(repr=False)
    unusable: str = ""
    # Where and how to connect, without user credentials: what other purposes' roles
    # (the assistant's) connect with (see for_purpose).
    target: ConnectionInfo | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return f"{self.cluster}/{self.name}"

    @property
    def pool_key(self) -> tuple[Any, ...]:
        """Everything a pool is built from: a change means the pool must be rebuilt."""
        return (self.id, self.connection, self.pool)

    @property
    def takes_traffic(self) -> bool:
        """Whether this process may keep a pool open to it (drained when false)."""
        return self.enabled and self.state != "fenced" and self.connection is not None

    def candidate(self) -> Candidate:
        return Candidate(
            name=self.name,
            role=self.role,
            enabled=self.enabled,
            state=self.state,
            weight=self.weight,
            in_recovery=self.in_recovery,
            lag_s=self.lag_s,
            latency_ms=self.latency_ms,
            health_score=self.health_score,
        )


@dataclass(frozen=True)
class ClusterView:
    id: int
    name: str
    read_preference: str
    load_balancing: str
    max_replica_lag_s: float | None
    nearest_window_ms: float
    strict_classification: bool
    retry: RetryPolicy
    circuit_failure_threshold: int
    circuit_cooldown_s: float
    endpoints: tuple[EndpointView, ...]
    # Precomputed once per snapshot: the router reads them on every request.
    candidates: tuple[Candidate, ...] = ()
    unusable: Mapping[str, str] = field(default_factory=dict)
    by_name: Mapping[str, EndpointView] = field(default_factory=dict)
    has_replicas: bool = False
    # The roles of the MCP server's tools (None: not registered); decrypted only by
    # for_purpose, in the processes that serve them.
    assistant_role: StoredRole | None = field(default=None, repr=False)
    assistant_write_role: StoredRole | None = field(default=None, repr=False)
    # Set on views derived for a purpose other than operations.
    purpose: Purpose = OPERATIONS

    def endpoint(self, name: str) -> EndpointView:
        return self.by_name[name]


@dataclass(frozen=True)
class Snapshot:
    version: int | None
    loaded_at: float
    clusters: Mapping[str, ClusterView]

    def cluster(self, name: str) -> ClusterView | None:
        return self.clusters.get(name)


def load_snapshot(version: int | None, *, clock: Callable[[], float] = time.monotonic) -> Snapshot:
    """Read every cluster and endpoint from the control database."""
    from endpoints.models import Cluster

    clusters: dict[str, ClusterView] = {}
    for cluster in Cluster.objects.prefetch_related("endpoints").order_by("name"):
        try:
            clusters[cluster.name] = _cluster_view(cluster)
        except ValueError as exc:
            # Rows written around validation must not take every other cluster down.
            logger.error("cluster %r cannot be routed to: %s", cluster.name, exc)
    return Snapshot(version=version, loaded_at=clock(), clusters=MappingProxyType(clusters))


def _cluster_view(cluster: Any) -> ClusterView:
    views = tuple(_endpoint_view(cluster, endpoint) for endpoint in cluster.endpoints.all())
    usable = tuple(view for view in views if view.connection is not None)
    return ClusterView(
        assistant_role=cluster.assistant_role(writes=False),
        assistant_write_role=cluster.assistant_role(writes=True),
        id=cluster.pk,
        name=cluster.name,
        read_preference=cluster.read_preference,
        load_balancing=cluster.load_balancing,
        max_replica_lag_s=cluster.max_replica_lag_s,
        nearest_window_ms=cluster.nearest_window_ms,
        strict_classification=cluster.strict_classification,
        retry=RetryPolicy(
            strategy=cluster.retry_strategy,
            max_attempts=cluster.retry_max_attempts,
            initial_delay_ms=cluster.retry_initial_delay_ms,
            max_delay_ms=cluster.retry_max_delay_ms,
            multiplier=cluster.retry_multiplier,
            increment_ms=cluster.retry_increment_ms,
        ),
        circuit_failure_threshold=cluster.circuit_failure_threshold,
        circuit_cooldown_s=cluster.circuit_cooldown_s,
        endpoints=views,
        candidates=tuple(view.candidate() for view in usable),
        unusable=MappingProxyType({v.name: v.unusable for v in views if v.unusable}),
        by_name=MappingProxyType({view.name: view for view in views}),
        has_replicas=any(v.role == "replica" and v.takes_traffic for v in views),
    )


def _endpoint_view(cluster: Any, endpoint: Any) -> EndpointView:
    endpoint.cluster = cluster  # already loaded: spare connection_info() a query
    connection: ConnectionInfo | None
    unusable = ""
    target = replace(endpoint.connection_info(with_password=False), user="")
    try:
        connection = endpoint.connection_info()
    except DecryptionError:
        connection = None
        unusable = (
            "its stored password cannot be decrypted with PGWARDEN_ENCRYPTION_KEYS "
            "(set the password again, or restore the old key)"
        )
    return EndpointView(
        id=endpoint.pk,
        cluster=cluster.name,
        name=endpoint.name,
        role=endpoint.role,
        enabled=endpoint.enabled,
        state=endpoint.state,
        weight=endpoint.weight,
        zone=endpoint.zone,
        in_recovery=endpoint.in_recovery,
        lag_s=endpoint.replication_lag_s,
        lag_bytes=endpoint.replication_lag_bytes,
        latency_ms=endpoint.last_latency_ms,
        health_score=endpoint.health_score,
        address=f"{endpoint.host}:{endpoint.port}",
        pool=PoolSettings(
            min_size=endpoint.pool_min_size,
            max_size=endpoint.pool_max_size,
            timeout_s=endpoint.pool_timeout_s,
            max_idle_s=endpoint.pool_max_idle_s,
            max_lifetime_s=endpoint.pool_max_lifetime_s,
        ),
        connection=connection,
        unusable=unusable,
        target=target,
    )


# Views for the other purposes (the MCP server's roles)


def for_purpose(snapshot: Snapshot, purpose: Purpose, limits: AssistantLimits) -> Snapshot:
    """``snapshot`` as connections for ``purpose`` see it: same endpoints, that purpose's role.

    Operations is ``snapshot`` itself. For an assistant purpose every endpoint connects with
    the cluster's assistant (or assistant write) role and the purpose's session settings; a
    cluster without that role has every endpoint unusable, saying why.
    """
    if not purpose.assistant:
        return snapshot
    clusters = {
        name: _purpose_view(view, purpose, limits) for name, view in snapshot.clusters.items()
    }
    return Snapshot(
        version=snapshot.version,
        loaded_at=snapshot.loaded_at,
        clusters=MappingProxyType(clusters),
    )


def _purpose_view(view: ClusterView, purpose: Purpose, limits: AssistantLimits) -> ClusterView:
    settings = session_settings(purpose, limits)
    role = view.assistant_write_role if purpose.writes else view.assistant_role
    password: Secret | None = None
    problem = ""
    if purpose.uses_operations_role:
        role = None  # each endpoint's own user, as the operator explicitly chose
    elif role is None:
        kind = "assistant write role" if purpose.writes else "assistant role"
        problem = f"cluster {view.name!r} has no {kind} registered"
    else:
        try:
            password = role.password()
        except DecryptionError:
            problem = (
                f"the stored password of cluster {view.name!r}'s assistant role cannot be "
                "decrypted with PGWARDEN_ENCRYPTION_KEYS (set it again, or restore the old key)"
            )
    endpoints = tuple(
        _purpose_endpoint(endpoint, role, password, settings, problem)
        for endpoint in view.endpoints
    )
    usable = tuple(endpoint for endpoint in endpoints if endpoint.connection is not None)
    return replace(
        view,
        endpoints=endpoints,
        candidates=tuple(endpoint.candidate() for endpoint in usable),
        unusable=MappingProxyType({e.name: e.unusable for e in endpoints if e.unusable}),
        by_name=MappingProxyType({endpoint.name: endpoint for endpoint in endpoints}),
        has_replicas=any(e.role == "replica" and e.takes_traffic for e in endpoints),
        purpose=purpose,
    )


def _purpose_endpoint(
    endpoint: EndpointView,
    role: StoredRole | None,
    password: Secret | None,
    settings: tuple[tuple[str, str], ...],
    problem: str,
) -> EndpointView:
    if problem or endpoint.target is None:
        return replace(endpoint, connection=None, unusable=problem or endpoint.unusable)
    if role is None:  # the operations role, by the operator's explicit choice
        if endpoint.connection is None:
            return endpoint
        base = endpoint.connection
    else:
        assert password is not None
        # The cluster's role goes to every endpoint of the cluster, one an assistant may
        # have added included: only by SCRAM, so a server that is not the cluster's (it
        # would not hold the role's verifier) never receives the password.
        base = replace(
            endpoint.target,
            user=role.user,
            password=password,
            require_auth=SCRAM if password else "none",
        )
    connection = replace(base, settings=settings, application_name=ASSISTANT_APPLICATION_NAME)
    return replace(endpoint, connection=connection, unusable="")


SCRAM = "scram-sha-256"


class PurposeTopology:
    """A :class:`Topology` seen through :func:`for_purpose`: derived once per snapshot."""

    def __init__(
        self, base: Topology, purpose: Purpose, limits: Callable[[], AssistantLimits]
    ) -> None:
        self.base = base
        self.purpose = purpose
        self._limits = limits
        self._derived: tuple[Snapshot, Snapshot] | None = None
        self._lock = threading.Lock()

    def current(self) -> Snapshot:
        base = self.base.current()
        derived = self._derived
        if derived is not None and derived[0] is base:
            return derived[1]
        with self._lock:
            derived = self._derived
            if derived is None or derived[0] is not base:
                derived = (base, for_purpose(base, self.purpose, self._limits()))
                self._derived = derived
        return derived[1]

    def invalidate(self) -> None:
        """As :meth:`Topology.invalidate`: the base reloads, and this view with it."""
        self.base.invalidate()


class Topology:
    """Holds this process's snapshot and replaces it when the version moves."""

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        check_interval_s: float = VERSION_CHECK_INTERVAL_S,
    ) -> None:
        self._redis_url = redis_url
        self._clock = clock
        self._check_interval_s = check_interval_s
        self._snapshot: Snapshot | None = None
        self._next_check = 0.0
        self._redis_retry_at = 0.0
        self._redis: redis.Redis | None = None
        self._lock = threading.Lock()

    def current(self) -> Snapshot:
        """The snapshot to route by; cheap unless a version check is due."""
        snapshot = self._snapshot
        if snapshot is not None and self._clock() < self._next_check:
            return snapshot
        if snapshot is not None and not self._lock.acquire(blocking=False):
            # Another thread is refreshing: keep serving from the current view.
            return snapshot
        if snapshot is None:
            self._lock.acquire()
        try:
            return self._refresh()
        finally:
            self._lock.release()

    def invalidate(self) -> None:
        """This process changed the topology: reload before the next request."""
        self._next_check = 0.0
        self._forced = True

    _forced = False

    def _refresh(self) -> Snapshot:
        now = self._clock()
        snapshot = self._snapshot
        if snapshot is not None and now < self._next_check:
            return snapshot  # refreshed by the thread that held the lock before us
        forced, self._forced = self._forced, False
        version = self._read_version(now)
        if version is None:
            stale = snapshot is None or forced or now - snapshot.loaded_at >= REDIS_DOWN_RELOAD_S
        else:
            stale = (
                snapshot is None
                or forced
                or version != snapshot.version
                or now - snapshot.loaded_at >= MAX_SNAPSHOT_AGE_S
            )
        if stale:
            snapshot = load_snapshot(version, clock=self._clock)
            self._snapshot = snapshot
        self._next_check = self._clock() + self._check_interval_s
        assert snapshot is not None
        return snapshot

    def _read_version(self, now: float) -> int | None:
        if now < self._redis_retry_at:
            return None
        try:
            version = coordination.read_topology_version(self._client())
        except coordination.CoordinationError as exc:
            if self._redis_retry_at == 0.0 or now - self._redis_retry_at > 60:
                logger.warning(
                    "%s; reloading from the database every %.0f s until it is back",
                    exc,
                    REDIS_DOWN_RELOAD_S,
                )
            self._redis_retry_at = now + REDIS_DOWN_RELOAD_S
            return None
        self._redis_retry_at = 0.0
        return version

    def _client(self) -> redis.Redis:
        if self._redis is None:
            self._redis = redis_client(self._redis_url)
        return self._redis

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._redis = None
        self._snapshot = None
        self._next_check = 0.0


def redis_client(url: str | None = None) -> redis.Redis:
    """A client with the request path's short timeouts (see :mod:`endpoints.coordination`)."""
    return coordination.redis_client(url)


def bump_version() -> int | None:
    """Increment the shared version; other processes reload within a second."""
    return coordination.bump_topology_version()


def notify_changed() -> None:
    """Call after committing a change routing depends on (``.update()`` skips signals)."""
    coordination.notify_topology_changed()


def on_local_change(listener: Callable[[], None]) -> None:
    """Run ``listener`` in this process whenever it changes the topology itself."""
    coordination.on_local_topology_change(listener)


def _changed_on_commit(**kwargs: Any) -> None:
    if kwargs.get("raw"):
        return  # loaddata
    transaction.on_commit(notify_changed, using=kwargs.get("using"))


def connect_signals() -> None:
    from endpoints.models import Cluster, Endpoint

    for model in (Cluster, Endpoint):
        uid = f"pgwarden-topology-{model.__name__}"
        post_save.connect(_changed_on_commit, sender=model, dispatch_uid=uid + "-save")
        post_delete.connect(_changed_on_commit, sender=model, dispatch_uid=uid + "-delete")
