"""Sweep scheduling: which clusters are due a sweep, and the lock that keeps sweeps apart.

Celery beat runs a dispatcher every second, which claims in Redis, per cluster, the
right to dispatch its next sweep once ``check_interval_s`` has elapsed
(:func:`claim_due_sweeps`: restarting beat, or several dispatchers, never doubles a
sweep). Each sweep holds a lock per cluster (:func:`take_sweep_lock`), so sweeps of
one cluster never overlap whatever the number of workers and machines; a sweep that
finds the lock taken is skipped, not queued. The Redis side is
:mod:`endpoints.coordination`; this module holds the sweep's timings and its
language (a skipped sweep says why, a lost lock is logged, never raised).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from endpoints import coordination
from endpoints.core.observations import Observation
from endpoints.models import Cluster

if TYPE_CHECKING:
    import redis

logger = logging.getLogger("pgwarden.health")

# Beat runs the dispatcher once a second: intervals are honoured to that tick.
DISPATCH_TICK_S = 1.0
# The sweep lock outlives a normal sweep (probes take at most one probe timeout, the
# writes a fraction of a second) and frees the cluster soon after a worker dies mid-sweep.
SWEEP_LOCK_PROBE_TIMEOUTS = 3
SWEEP_LOCK_MARGIN_S = 2.0
# Reacting (promoting a replica, fencing) takes longer than a sweep; the lock is extended
# so that no sweep observes a failover half done.
REACT_LOCK_TTL_S = 60.0

dispatch_claim_ttl_s = coordination.dispatch_claim_ttl_s


@dataclass(frozen=True)
class SweepReport:
    """What a scheduled sweep did, as the Celery task returns it."""

    cluster_id: int
    swept: bool
    endpoints: int = 0
    available: int = 0
    elapsed_s: float = 0.0
    skipped_because: str = ""

    @classmethod
    def skipped(cls, cluster_id: int, because: str) -> SweepReport:
        return cls(cluster_id, swept=False, skipped_because=because)

    @classmethod
    def of(cls, cluster_id: int, observations: list[Observation], started: float) -> SweepReport:
        """A sweep that ran, ``started`` at that ``time.monotonic()``."""
        return cls(
            cluster_id,
            swept=True,
            endpoints=len(observations),
            available=sum(o.available for o in observations),
            elapsed_s=round(time.monotonic() - started, 3),
        )


def sweep_lock(cluster: Cluster, *, client: redis.Redis | None = None) -> coordination.ClusterLock:
    """The cross-machine lock that keeps sweeps of ``cluster`` from overlapping."""
    ttl_s = SWEEP_LOCK_PROBE_TIMEOUTS * cluster.probe_timeout_s + SWEEP_LOCK_MARGIN_S
    return coordination.sweep_lock(cluster.pk, ttl_s, client=client)


def take_sweep_lock(
    cluster: Cluster, *, client: redis.Redis | None = None
) -> tuple[coordination.ClusterLock | None, str]:
    """The cluster's sweep lock, taken without waiting; or None and why the sweep is skipped."""
    lock = sweep_lock(cluster, client=client)
    try:
        acquired = lock.acquire()
    except coordination.CoordinationError as exc:
        # Without the lock two sweeps could overlap (and react twice): skip instead.
        cause = exc.__cause__ or exc
        logger.error("no sweep of %s: the sweep lock is unreachable in Redis (%s)", cluster, cause)
        return None, f"Redis unreachable: {cause}"
    if not acquired:
        return None, "another sweep of this cluster is running"
    return lock, ""


def extend_for_reaction(lock: coordination.ClusterLock) -> None:
    """Keep the lock through a reaction (failover, fencing), longer than a sweep."""
    try:
        lock.extend(REACT_LOCK_TTL_S)
    except coordination.CoordinationError as exc:  # LockLost included: the lock expired
        logger.warning("could not extend the sweep lock %s: %s", lock.key, exc.__cause__ or exc)


def release_sweep_lock(lock: coordination.ClusterLock, cluster: Cluster) -> None:
    """Release the lock; a lock already lost or an unreachable Redis is logged only."""
    try:
        lock.release()
    except coordination.LockLost:
        logger.warning(
            "the sweep of %s outlived its lock; another sweep may have started meanwhile",
            cluster,
        )
    except coordination.CoordinationError as exc:
        logger.warning(
            "could not release the sweep lock of %s (%s); it expires", cluster, exc.__cause__
        )


def claim_due_sweeps(
    clusters: Iterable[tuple[int, float]], *, client: redis.Redis | None = None
) -> list[int]:
    """Of ``(cluster_id, check_interval_s)`` pairs, the clusters whose sweep is due.

    See :func:`endpoints.coordination.claim_due_sweeps`; raises
    :class:`~endpoints.coordination.CoordinationError` when Redis is unreachable.
    """
    return coordination.claim_due_sweeps(clusters, client=client)


def sweep_expiry_s(check_interval_s: float) -> float:
    """A sweep not started within one interval is dropped: the next one is on its way."""
    return max(check_interval_s, DISPATCH_TICK_S)
