"""endpoints.coordination: locks, claims and change notices against a real Redis."""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

import pytest
import redis

from endpoints import coordination
from endpoints.coordination import ClusterLock, CoordinationError, LockLost


@pytest.fixture
def client(redis_server: Any) -> redis.Redis:
    return coordination.redis_client(timeout_s=coordination.TASK_TIMEOUT_S)


@pytest.fixture
def unreachable(closed_port: int) -> redis.Redis:
    return coordination.redis_client(f"redis://127.0.0.1:{closed_port}/0")


def fresh_key() -> str:
    return f"pgwarden:test:{uuid.uuid4().hex}"


def test_a_lock_is_held_by_one_holder_at_a_time(client: redis.Redis) -> None:
    key = fresh_key()
    first, second = ClusterLock(key, 10, client=client), ClusterLock(key, 10, client=client)

    assert first.acquire()
    assert not second.acquire()  # taken: no waiting
    first.release()
    assert second.acquire()
    second.release()
    assert not client.exists(key)


def test_a_lock_expires_so_a_dead_holder_frees_it_and_its_release_says_so(
    client: redis.Redis,
) -> None:
    key = fresh_key()
    lost = ClusterLock(key, 0.2, client=client)
    assert lost.acquire()
    time.sleep(0.3)

    other = ClusterLock(key, 10, client=client)
    assert other.acquire()
    with pytest.raises(LockLost, match=key):
        lost.release()
    with pytest.raises(LockLost):
        lost.renew()
    assert client.exists(key)  # the other holder's lock is untouched
    other.release()


def test_extend_and_renew_set_the_ttl(client: redis.Redis) -> None:
    key = fresh_key()
    lock = ClusterLock(key, 5, client=client)
    assert lock.acquire()

    lock.extend(60)
    assert 55_000 < client.pttl(key) <= 60_000
    lock.renew()
    assert 4_000 < client.pttl(key) <= 5_000
    lock.release()


def test_without_redis_locks_and_claims_raise_coordination_errors(
    unreachable: redis.Redis,
) -> None:
    lock = ClusterLock(fresh_key(), 10, client=unreachable)
    with pytest.raises(CoordinationError, match="cannot take the lock"):
        lock.acquire()
    with pytest.raises(CoordinationError, match="cannot claim due sweeps"):
        coordination.claim_due_sweeps([(1, 1.0)], client=unreachable)
    with pytest.raises(CoordinationError, match="topology version"):
        coordination.read_topology_version(unreachable)


def test_a_sweep_is_claimed_once_per_interval(client: redis.Redis) -> None:
    ids = [int(time.time() * 1000) % 10**9 + offset for offset in (0, 1)]
    for cluster_id in ids:
        client.delete(coordination.DISPATCH_KEY.format(cluster_id=cluster_id))
    clusters = [(ids[0], 0.5), (ids[1], 60.0)]

    assert coordination.claim_due_sweeps(clusters, client=client) == ids
    assert coordination.claim_due_sweeps(clusters, client=client) == []
    time.sleep(coordination.dispatch_claim_ttl_s(0.5) + 0.05)
    assert coordination.claim_due_sweeps(clusters, client=client) == ids[:1]


def test_a_change_notice_bumps_the_version_and_runs_local_listeners(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    heard: list[str] = []
    monkeypatch.setattr(coordination, "_local_listeners", [])
    coordination.on_local_topology_change(lambda: heard.append("changed"))
    before = coordination.read_topology_version(client)

    coordination.notify_topology_changed()

    assert coordination.read_topology_version(client) == before + 1
    assert heard == ["changed"]


def test_an_unpublished_change_is_logged_not_raised(
    unreachable: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(coordination, "_notice_client", unreachable)
    assert coordination.bump_topology_version() is None


def test_a_forked_child_forgets_the_parents_clients(client: redis.Redis) -> None:
    assert coordination.task_client() is coordination.task_client()
    coordination.bump_topology_version()
    pid = os.fork()
    if pid == 0:  # the child: exit at once, never back into pytest
        forgotten = coordination._task_client is None and coordination._notice_client is None
        os._exit(0 if forgotten else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert coordination._task_client is not None  # the parent keeps its own
