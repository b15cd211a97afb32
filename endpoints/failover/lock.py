"""The cluster's failover lock: one failover or switchover at a time, on every machine.

A thin layer over :func:`endpoints.coordination.failover_lock` that speaks failover's
language: taken without waiting (held: :class:`FailoverInProgress`; Redis unreachable:
:class:`FailoverError`, as two workers could otherwise promote two replicas), renewed after
every step so a worker that dies mid-failover blocks the cluster for one TTL at most, and
a lock lost meanwhile stops the procedure.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from endpoints import coordination
from endpoints.failover.errors import FailoverError, FailoverInProgress
from endpoints.models import Cluster

if TYPE_CHECKING:
    import redis

# Renewed after every step; a step is bounded well below it (promotion, catch-up, streaming).
LOCK_TTL_S = 90


def lock_key(cluster_pk: int) -> str:
    """The Redis key of the cluster's failover lock."""
    return coordination.FAILOVER_LOCK_KEY.format(cluster_id=cluster_pk)


def _cause(exc: BaseException) -> BaseException:
    # The Redis error itself, as the messages have always quoted it.
    return exc.__cause__ or exc


class ClusterLock:
    """The cluster's failover lock, as a context manager that raises failover's errors."""

    def __init__(self, cluster: Cluster, *, client: redis.Redis | None = None) -> None:
        self.cluster = cluster
        # client: this process's task client (coordination.task_client) unless given.
        self._lock = coordination.failover_lock(cluster.pk, LOCK_TTL_S, client=client)

    def __enter__(self) -> ClusterLock:
        try:
            acquired = self._lock.acquire()
        except coordination.CoordinationError as exc:
            raise FailoverError(
                f"cannot take the failover lock of cluster {self.cluster.name!r} in Redis "
                f"({_cause(exc)}); refusing to fail over without it, since two workers could "
                "then promote two replicas. Bring Redis back and retry."
            ) from None
        if not acquired:
            raise FailoverInProgress(
                f"a failover or switchover of cluster {self.cluster.name!r} is already running "
                f"(lock {lock_key(self.cluster.pk)} is held); see its latest failover event"
            )
        return self

    def renew(self) -> None:
        """Restart the TTL; a lock lost meanwhile (expired, taken) stops the procedure."""
        try:
            self._lock.renew()
        except coordination.CoordinationError as exc:
            raise FailoverError(
                f"lost the failover lock of cluster {self.cluster.name!r} ({_cause(exc)}); "
                "stopped so that no other worker's failover interleaves with this one"
            ) from None

    def __exit__(self, *exc_info: object) -> None:
        with contextlib.suppress(coordination.CoordinationError):
            self._lock.release()
