"""endpoints.failover.lock: the cluster's failover lock, against a real Redis.

The lock only needs a cluster's primary key and name, so these tests use unsaved
clusters and no database; the procedures' use of the lock (a held lock refuses a failover,
two workers race) is tested on real clusters in test_failover.py.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import redis

from endpoints import coordination
from endpoints.failover import FailoverError, FailoverInProgress, lock_key
from endpoints.failover.lock import LOCK_TTL_S, ClusterLock
from endpoints.models import Cluster

_pks = itertools.count(900_000)


@pytest.fixture
def client(redis_server: Any) -> redis.Redis:
    return coordination.redis_client(timeout_s=coordination.TASK_TIMEOUT_S)


def a_cluster() -> Cluster:
    pk = next(_pks)
    return Cluster(pk=pk, name=f"lock-test-{pk}")


def test_the_lock_key_is_the_one_coordination_uses() -> None:
    assert lock_key(42) == "pgwarden:failover:42"
    assert lock_key(42) == coordination.FAILOVER_LOCK_KEY.format(cluster_id=42)


def test_one_holder_at_a_time_and_the_second_is_told_a_failover_is_running(
    client: redis.Redis,
) -> None:
    cluster = a_cluster()
    with ClusterLock(cluster, client=client):
        ttl_s = client.ttl(lock_key(cluster.pk))
        assert 0 < ttl_s <= LOCK_TTL_S
        with (
            pytest.raises(FailoverInProgress, match="already running") as refused,
            ClusterLock(cluster, client=client),
        ):
            pass
        assert lock_key(cluster.pk) in str(refused.value)
        assert cluster.name in str(refused.value)
    assert not client.exists(lock_key(cluster.pk))  # released on the way out
    with ClusterLock(cluster, client=client):
        pass


def test_locks_of_different_clusters_are_independent(client: redis.Redis) -> None:
    with ClusterLock(a_cluster(), client=client), ClusterLock(a_cluster(), client=client):
        pass


def test_without_redis_there_is_no_failover_and_the_error_says_why(closed_port: int) -> None:
    cluster = a_cluster()
    unreachable = coordination.redis_client(f"redis://127.0.0.1:{closed_port}/0")
    with pytest.raises(FailoverError) as refused, ClusterLock(cluster, client=unreachable):
        pass
    assert not isinstance(refused.value, FailoverInProgress)
    message = str(refused.value)
    assert message.startswith(
        f"cannot take the failover lock of cluster {cluster.name!r} in Redis ("
    )
    assert "two workers could then promote two replicas. Bring Redis back and retry." in message


def test_a_lock_lost_meanwhile_stops_the_procedure_at_its_next_step(client: redis.Redis) -> None:
    cluster = a_cluster()
    key = lock_key(cluster.pk)
    with ClusterLock(cluster, client=client) as held:
        held.renew()  # still ours: nothing happens
        # It expired, and another worker took it.
        client.delete(key)
        other = coordination.failover_lock(cluster.pk, LOCK_TTL_S, client=client)
        assert other.acquire()
        with pytest.raises(
            FailoverError, match=f"lost the failover lock of cluster {cluster.name!r}"
        ):
            held.renew()
    # Leaving the block did not release the other worker's lock.
    assert client.exists(key)
    other.release()
