"""Coordination between processes: every Redis client, lock, claim and change notice.

pgwarden's processes (web, MCP, Celery workers and beat, on any number of machines)
agree through Redis, and only through this module, as Patroni keeps its DCS behind
one interface. What lives here:

- clients: :func:`redis_client` (short timeouts, for the request path) and
  :func:`task_client` (one per process, longer timeouts, for background work);
- the topology version, a counter every process polls to know when to reload its
  routing snapshot: :func:`read_topology_version`, and the change notice
  :func:`notify_topology_changed` (which bumps it);
- :class:`ClusterLock`: a per-cluster lock with a TTL, taken without waiting
  (:func:`sweep_lock` keeps sweeps of one cluster from overlapping,
  :func:`failover_lock` lets one failover or switchover of a cluster run at a time);
- :func:`claim_due_sweeps`: ``SET NX`` claims so one dispatcher gets a cluster's
  next sweep per interval;
- the fork-safety resets: a process-wide client is forgotten in a forked child,
  whose inherited socket would otherwise be shared by two processes.

Contract: Redis failures surface as :class:`CoordinationError` (a lock found expired
or taken by another holder as :class:`LockLost`), never as ``redis`` exceptions, so
callers decide what an unreachable Redis means for them without importing ``redis``.
Imports nothing of pgwarden beyond ``endpoints.core``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable

import redis
from django.conf import settings
from redis.lock import Lock

logger = logging.getLogger("pgwarden.coordination")

# Short: the request path reads the topology version, and a hung Redis must not stall it.
REQUEST_TIMEOUT_S = 0.25
# Background work (sweeps, dispatch, failover) is not in a hurry.
TASK_TIMEOUT_S = 2.0

TOPOLOGY_VERSION_KEY = "pgwarden:topology:version"
SWEEP_LOCK_KEY = "pgwarden:sweep:{cluster_id}"
DISPATCH_KEY = "pgwarden:sweep:dispatched:{cluster_id}"
# A dispatcher tick that runs a little early must still find the previous claim expired.
DISPATCH_SLACK_S = 0.2
# A failed change notice is logged at most this often, not once per change.
NOTICE_WARNING_INTERVAL_S = 60.0


class CoordinationError(Exception):
    """Redis could not be reached, or refused: what failed, and the Redis error."""


class LockLost(CoordinationError):
    """A lock this process held expired or was taken by another holder meanwhile."""


# Clients


def redis_client(url: str | None = None, *, timeout_s: float = REQUEST_TIMEOUT_S) -> redis.Redis:
    """A new client (and connection pool) for ``url``, ``settings.REDIS_URL`` by default."""
    return redis.Redis.from_url(
        url or settings.REDIS_URL, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
    )


_task_client: redis.Redis | None = None
_notice_client: redis.Redis | None = None
_notice_warned_at = -1e9
_local_listeners: list[Callable[[], None]] = []


def task_client() -> redis.Redis:
    """This process's client for background work: one pool per process, not per task."""
    global _task_client
    if _task_client is None:
        _task_client = redis_client(timeout_s=TASK_TIMEOUT_S)
    return _task_client


def _forget_clients_after_fork() -> None:
    # A socket inherited from the parent would be shared by two processes.
    global _task_client, _notice_client
    _task_client = None
    _notice_client = None


os.register_at_fork(after_in_child=_forget_clients_after_fork)


# The topology version


def read_topology_version(client: redis.Redis) -> int:
    """The shared topology version (0 before the first change)."""
    try:
        raw = client.get(TOPOLOGY_VERSION_KEY)
    except redis.RedisError as exc:
        raise CoordinationError(f"cannot read the topology version from Redis ({exc})") from exc
    return int(raw) if raw is not None else 0


def bump_topology_version() -> int | None:
    """Increment the shared version, so every process reloads; None if Redis is unreachable.

    A failure is logged (once a minute at most) and not raised: the change is committed
    already, and other processes pick it up at their next periodic reload.
    """
    global _notice_client, _notice_warned_at
    try:
        if _notice_client is None:
            _notice_client = redis_client()
        return int(_notice_client.incr(TOPOLOGY_VERSION_KEY))
    except redis.RedisError as exc:
        now = time.monotonic()
        if now - _notice_warned_at > NOTICE_WARNING_INTERVAL_S:
            _notice_warned_at = now
            logger.warning(
                "could not publish a topology change to Redis (%s): other processes pick "
                "it up at their next periodic reload of the topology",
                exc,
            )
        return None


def notify_topology_changed() -> None:
    """Call after committing a change routing depends on: every process reloads its view.

    Bumps the shared version (:func:`bump_topology_version`) and runs this process's own
    listeners (:func:`on_local_topology_change`), which need not wait for their next poll.
    """
    bump_topology_version()
    for listener in _local_listeners:
        listener()


def on_local_topology_change(listener: Callable[[], None]) -> None:
    """Run ``listener`` in this process whenever it changes the topology itself."""
    _local_listeners.append(listener)


# Locks


class ClusterLock:
    """A lock in Redis held by one process at a time, with a TTL so a dead holder frees it.

    Taken without waiting (:meth:`acquire` says whether it was); the holder extends or
    renews the TTL while it works, and releases it at the end.
    """

    def __init__(self, key: str, ttl_s: float, *, client: redis.Redis | None = None) -> None:
        self.key = key
        self.ttl_s = ttl_s
        self._lock: Lock = (client or task_client()).lock(key, timeout=ttl_s, blocking=False)

    def acquire(self) -> bool:
        """Take the lock if it is free; False when another holder has it."""
        try:
            return bool(self._lock.acquire(blocking=False))
        except redis.RedisError as exc:
            raise CoordinationError(f"cannot take the lock {self.key} in Redis ({exc})") from exc

    def extend(self, ttl_s: float) -> None:
        """Make the lock last ``ttl_s`` from now (for work longer than its TTL)."""
        self._call("extend", lambda: self._lock.extend(ttl_s, replace_ttl=True))

    def renew(self) -> None:
        """Restart the lock's original TTL."""
        self._call("renew", self._lock.reacquire)

    def release(self) -> None:
        """Give the lock up; :class:`LockLost` if it had expired or changed hands."""
        self._call("release", self._lock.release)

    def _call(self, action: str, step: Callable[[], object]) -> None:
        try:
            step()
        except redis.exceptions.LockError as exc:
            raise LockLost(f"could not {action} the lock {self.key}: it was lost ({exc})") from exc
        except redis.RedisError as exc:
            raise CoordinationError(
                f"could not {action} the lock {self.key} in Redis ({exc})"
            ) from exc


def sweep_lock(cluster_id: int, ttl_s: float, *, client: redis.Redis | None = None) -> ClusterLock:
    """The lock that keeps sweeps of one cluster from overlapping, across machines."""
    return ClusterLock(SWEEP_LOCK_KEY.format(cluster_id=cluster_id), ttl_s, client=client)


# Claims


def dispatch_claim_ttl_s(check_interval_s: float) -> float:
    """How long a dispatch claim lasts: a little under the interval, so ticks keep pace."""
    return max(check_interval_s - DISPATCH_SLACK_S, check_interval_s / 2)


def claim_due_sweeps(
    clusters: Iterable[tuple[int, float]], *, client: redis.Redis | None = None
) -> list[int]:
    """Of ``(cluster_id, check_interval_s)`` pairs, the clusters whose sweep is due.

    Each is claimed in Redis (``SET NX`` with the interval as its expiry) in one round
    trip, so only one dispatcher gets a given cluster per interval, even across beat
    restarts or several dispatchers at once.
    """
    clusters = list(clusters)
    if not clusters:
        return []
    pipeline = (client or task_client()).pipeline(transaction=False)
    now = f"{time.time():.3f}"
    for cluster_id, interval_s in clusters:
        ttl_ms = max(1, int(dispatch_claim_ttl_s(interval_s) * 1000))
        pipeline.set(DISPATCH_KEY.format(cluster_id=cluster_id), now, nx=True, px=ttl_ms)
    try:
        claimed = pipeline.execute()
    except redis.RedisError as exc:
        raise CoordinationError(f"cannot claim due sweeps in Redis ({exc})") from exc
    return [cluster_id for (cluster_id, _), ok in zip(clusters, claimed, strict=True) if ok]


# Failover


FAILOVER_LOCK_KEY = "pgwarden:failover:{cluster_id}"


def failover_lock(
    cluster_id: int, ttl_s: float, *, client: redis.Redis | None = None
) -> ClusterLock:
    """The lock that lets one failover or switchover of a cluster run at a time, everywhere.

    Without it two workers could promote two replicas: callers refuse to fail over when
    it cannot be taken (:class:`CoordinationError`), not only when it is held.
    """
    return ClusterLock(FAILOVER_LOCK_KEY.format(cluster_id=cluster_id), ttl_s, client=client)
