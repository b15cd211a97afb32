"""routing.pools against real servers: dead connections, refused and hung endpoints, rebuilds."""

from __future__ import annotations

import collections
import dataclasses
import inspect
import time

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from endpoints.core.conninfo import ConnectionInfo
from endpoints.core.crypto import Secret
from endpoints.devstack.localcluster import LocalPostgresCluster
from endpoints.routing.pools import (
    EndpointPool,
    EndpointUnreachable,
    LifoConnectionPool,
    PoolExhausted,
    PoolRegistry,
    connection_is_dead,
)
from endpoints.routing.topology import EndpointView, PoolSettings


def _view(
    pg_cluster: LocalPostgresCluster,
    *,
    port: int | None = None,
    endpoint_id: int = 1,
    max_size: int = 2,
    timeout_s: float = 5.0,
    connect_timeout_s: int = 2,
) -> EndpointView:
    node = pg_cluster.primary
    return EndpointView(
        id=endpoint_id,
        cluster="pools",
        name=f"e{endpoint_id}",
        role="primary",
        enabled=True,
        state="unknown",
        weight=100,
        zone="",
        in_recovery=None,
        lag_s=None,
        lag_bytes=None,
        latency_ms=None,
        health_score=None,
        address=f"127.0.0.1:{port or node.port}",
        pool=PoolSettings(
            min_size=1, max_size=max_size, timeout_s=timeout_s, max_idle_s=60, max_lifetime_s=600
        ),
        connection=ConnectionInfo(
            host="127.0.0.1",
            port=port or node.port,
            dbname=pg_cluster.dbname,
            user=pg_cluster.user,
            password=Secret(pg_cluster.password),
            sslmode="disable",
            connect_timeout_s=connect_timeout_s,
        ),
    )


def test_a_connection_terminated_while_idle_is_seen_dead_without_a_round_trip(
    pg_cluster: LocalPostgresCluster,
) -> None:
    with psycopg.connect(**pg_cluster.conninfo("primary"), autocommit=True) as victim:
        assert connection_is_dead(victim) is False
        pid = victim.info.backend_pid
        with psycopg.connect(**pg_cluster.conninfo("primary"), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        time.sleep(0.2)
        assert connection_is_dead(victim) is True


def test_acquire_and_release_count_connections_in_use(pg_cluster: LocalPostgresCluster) -> None:
    pool = EndpointPool(_view(pg_cluster))
    try:
        with pool.acquire() as conn:
            assert pool.in_use == 1
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert pool.in_use == 0
        assert pool.stats().size >= 1
    finally:
        pool.close()


def test_a_refused_endpoint_fails_fast_with_the_cause(
    pg_cluster: LocalPostgresCluster, closed_port: int
) -> None:
    pool = EndpointPool(_view(pg_cluster, port=closed_port, timeout_s=30.0))
    try:
        started = time.monotonic()
        with pytest.raises(EndpointUnreachable, match="refused"):
            pool.acquire()
        # Far below the 30 s pool timeout: the refusal itself ended the wait.
        assert time.monotonic() - started < 10
        assert pg_cluster.password not in str(pool.tracker.last_error)
    finally:
        pool.close()


def test_a_hung_endpoint_costs_one_connect_timeout(
    pg_cluster: LocalPostgresCluster, silent_port: int
) -> None:
    pool = EndpointPool(_view(pg_cluster, port=silent_port, timeout_s=30.0, connect_timeout_s=2))
    try:
        started = time.monotonic()
        with pytest.raises(EndpointUnreachable):
            pool.acquire()
        assert time.monotonic() - started < 10
    finally:
        pool.close()


def test_an_exhausted_pool_reports_load_not_failure(pg_cluster: LocalPostgresCluster) -> None:
    pool = EndpointPool(_view(pg_cluster, max_size=1, timeout_s=0.3))
    try:
        with pool.acquire(), pytest.raises(PoolExhausted, match="stayed busy"):
            pool.acquire()
        assert pool.in_use == 0
    finally:
        pool.close()


def test_the_registry_rebuilds_on_settings_change_and_closes_out_of_service_pools(
    pg_cluster: LocalPostgresCluster,
) -> None:
    registry = PoolRegistry()
    view = _view(pg_cluster)
    try:
        first = registry.get(view)
        assert registry.get(view) is first
        bigger = dataclasses.replace(view, pool=dataclasses.replace(view.pool, max_size=4))
        second = registry.get(bigger)
        assert second is not first
        assert second.stats().max_size == 4
        registry.sync([dataclasses.replace(bigger, enabled=False)])
        assert registry.peek(view.id) is None
        with pytest.raises(EndpointUnreachable, match="pool was closed"):
            second.acquire()
    finally:
        registry.close_all()


def test_the_lifo_pool_relies_on_psycopg_pools_fifo_deque() -> None:
    # LifoConnectionPool turns psycopg_pool's FIFO into LIFO by rotating its idle deque
    # before the left pop in _get_ready_connection: an upgrade that changes either (psycopg-pool
    # is pinned in requirements.txt) must be looked at before this override is kept.
    source = inspect.getsource(ConnectionPool._get_ready_connection)
    assert "self._pool.popleft()" in source
    pool = LifoConnectionPool("", open=False)
    assert isinstance(pool._pool, collections.deque)
    # take_idle and give_back repeat getconn's and putconn's common case with these.
    for name in ("_lock", "_nconns_min", "_stats", "_closed", "_waiting", "_reset"):
        assert hasattr(pool, name), name
    for name in ("_drained_at", "_pool_full_event", "_REQUESTS_NUM"):
        assert hasattr(pool, name), name
    returning = inspect.getsource(ConnectionPool._return_connection)
    assert "conn._created_at <= self._drained_at or conn._expire_at <= monotonic()" in returning
    adding = inspect.getsource(ConnectionPool._add_to_pool)
    assert "conn._pool = None" in adding
    assert "self._pool.append(conn)" in adding
    unchecked = inspect.getsource(ConnectionPool._getconn_unchecked)
    assert "conn._pool = self" in unchecked


def test_the_fast_paths_keep_the_pools_books(pg_cluster: LocalPostgresCluster) -> None:
    pool = EndpointPool(_view(pg_cluster, max_size=2))
    try:
        for _ in range(3):
            with pool.acquire() as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
        raw = pool._pool.get_stats()
        assert raw["requests_num"] >= 3
        assert pool.stats().idle == pool.stats().size == 1
        assert pool.in_use == 0
        # A connection returned in a transaction goes through putconn, which rolls it back.
        lease = pool.acquire()
        lease.conn.autocommit = False
        lease.conn.execute("SELECT 1")
        lease.release()
        with pool.acquire() as conn:
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            conn.autocommit = True
    finally:
        pool.close()


def test_the_lifo_pool_hands_out_the_most_recently_returned_connection() -> None:
    pool = LifoConnectionPool("", min_size=0, max_size=1, open=False)
    older, newer = object(), object()
    pool._pool.extend([older, newer])  # returned in this order: newer last
    assert pool._get_ready_connection(None) is newer
    assert pool._get_ready_connection(None) is older
    assert pool._get_ready_connection(None) is None
    assert pool.has_idle() is False


def test_serial_requests_reuse_one_backend_although_the_pool_holds_several(
    pg_cluster: LocalPostgresCluster,
) -> None:
    pool = EndpointPool(_view(pg_cluster, max_size=4))
    try:
        # Three connections at once, so the pool holds three idle ones afterwards.
        leases = [pool.acquire() for _ in range(3)]
        pids = {lease.conn.info.backend_pid for lease in leases}
        for lease in leases:
            lease.release()
        assert len(pids) == 3
        assert pool.stats().idle == 3
        served: set[int] = set()
        for _ in range(10):
            with pool.acquire() as conn:
                served.add(conn.execute("SELECT pg_backend_pid()").fetchone()[0])  # type: ignore[index]
        assert len(served) == 1  # FIFO would have cycled through all three
        assert served < pids
    finally:
        pool.close()


def test_the_first_request_does_not_grow_the_pool_past_min_size(
    pg_cluster: LocalPostgresCluster,
) -> None:
    pool = EndpointPool(_view(pg_cluster, max_size=4))  # min_size 1, opening in the background
    try:
        for _ in range(5):
            with pool.acquire() as conn:
                conn.execute("SELECT 1")
        time.sleep(0.2)  # a growth psycopg_pool started would have finished by now
        assert pool.stats().size == 1
    finally:
        pool.close()
