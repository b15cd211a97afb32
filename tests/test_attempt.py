"""routing.attempt and routing.connection(timeout_ms=) against the real local cluster."""

from __future__ import annotations

import os
import signal
import time

import psycopg
import pytest

from endpoints import routing
from endpoints.devstack.localcluster import LocalPostgresCluster
from endpoints.models import Cluster
from endpoints.routing import pools
from endpoints.routing.attempt import Attempt, Checkout, RequestProgress
from endpoints.routing.pools import EndpointPool
from endpoints.routing.stats import ClusterRuntime
from endpoints.routing.topology import ClusterView, load_snapshot

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_router")]


def _primary(local_cluster: Cluster) -> ClusterView:
    view = load_snapshot(None).cluster(local_cluster.name)
    assert view is not None
    return view


def _attempt(
    view: ClusterView, pool: EndpointPool, runtime: ClusterRuntime, **kwargs: object
) -> tuple[Attempt, RequestProgress, Checkout]:
    endpoint = view.by_name["primary"]
    request = RequestProgress(view.name, "write", view.read_preference)
    breaker = runtime.breaker(endpoint.name)
    checkout = Checkout(endpoint, pool, pool.acquire(), breaker, retry=False)
    return Attempt(runtime, checkout, request, **kwargs), request, checkout  # type: ignore[arg-type]


def test_an_attempt_releases_and_records_on_success_error_and_session_state(
    local_cluster: Cluster,
) -> None:
    view = _primary(local_cluster)
    pool = EndpointPool(view.by_name["primary"])
    runtime = ClusterRuntime(view)
    stats = runtime.endpoint_stats("primary")
    try:
        attempt, _, _ = _attempt(view, pool, runtime, deadline_s=5.0)
        with attempt as conn:
            assert pool.in_use == 1
            conn.execute("SELECT 1")
        assert (pool.in_use, stats.requests, stats.errors) == (0, 1, 0)
        assert not conn.closed
        assert not attempt.lost

        attempt, _, _ = _attempt(view, pool, runtime, deadline_s=5.0)
        with pytest.raises(psycopg.errors.DivisionByZero), attempt as conn:
            conn.execute("SELECT 1/0")
        # An SQL error is an answer: released, counted, not an error of the endpoint.
        assert (pool.in_use, stats.requests, stats.errors) == (0, 2, 0)
        assert not attempt.lost

        attempt, _, _ = _attempt(view, pool, runtime, deadline_s=5.0, discard=True)
        with attempt as conn:
            conn.execute("SET work_mem = '1MB'")
        # Session state: the connection is closed, never handed to the next caller.
        assert conn.closed
        assert (pool.in_use, stats.requests, stats.errors) == (0, 3, 0)
    finally:
        pool.close()


def test_an_attempt_whose_connection_is_lost_records_a_failure(
    local_cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    view = _primary(local_cluster)
    pool = EndpointPool(view.by_name["primary"])
    runtime = ClusterRuntime(view)
    try:
        attempt, request, checkout = _attempt(view, pool, runtime, deadline_s=5.0)
        with psycopg.connect(**pg_cluster.conninfo("primary"), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [checkout.conn.info.backend_pid])
        time.sleep(0.2)
        with pytest.raises(psycopg.OperationalError), attempt as conn:
            conn.execute("SELECT 1")
        assert attempt.lost
        assert pool.in_use == 0
        assert runtime.endpoint_stats("primary").errors == 1
        assert request.failed["primary"].startswith("connection lost")
        assert "primary" in runtime.suspects
        assert checkout.breaker.snapshot().consecutive_failures == 1
    finally:
        pool.close()


def test_connection_with_a_timeout_bounds_statements_and_is_reset_after(
    local_cluster: Cluster,
) -> None:
    with routing.connection("local", intent="write", timeout_ms=300) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("300ms",)
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(5)")
    # Back in the pool with the session reset: the next caller gets the default.
    for _ in range(3):
        with routing.connection("local", intent="write") as conn:
            assert conn.execute("SHOW statement_timeout").fetchone() != ("300ms",)
    assert routing.stats("local").endpoints["primary"].pool.in_use == 0  # type: ignore[union-attr]


def test_connection_with_a_timeout_is_cut_by_the_watchdog_when_the_server_hangs(
    local_cluster: Cluster,
) -> None:
    fired = pools.watchdog.fired
    started = time.monotonic()
    with routing.connection("local", intent="write", timeout_ms=200) as conn:
        pid = conn.info.backend_pid
        os.kill(pid, signal.SIGSTOP)  # a hung server: statement_timeout cannot fire
        try:
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
        finally:
            os.kill(pid, signal.SIGCONT)
    # 0.2 s of timeout plus the watchdog's grace, far below forever.
    assert time.monotonic() - started < routing.WATCHDOG_GRACE_S + 5
    assert pools.watchdog.fired == fired + 1
    assert routing.stats("local").endpoints["primary"].errors == 1


def test_connection_refuses_a_timeout_that_is_not_a_positive_integer(
    local_cluster: Cluster,
) -> None:
    with pytest.raises(ValueError, match="timeout_ms"), routing.connection("local", timeout_ms=0):
        pass
