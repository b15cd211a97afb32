"""The routed hot path's shortcuts keep behaviour: cached statement decisions, plain options.

Against the real local cluster (a primary and two streaming replicas).
"""

from __future__ import annotations

import psycopg
import pytest

from endpoints import routing
from endpoints.devstack.localcluster import LocalPostgresCluster
from endpoints.models import Cluster
from endpoints.routing import router as router_module
from endpoints.routing import topology
from endpoints.routing.options import PLAIN_OPTIONS, ExecuteOptions

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_router")]


def _configure(cluster: Cluster, **fields: object) -> None:
    Cluster.objects.filter(pk=cluster.pk).update(**fields)
    topology.notify_changed()


def test_a_cached_decision_follows_the_clusters_strict_mode(
    local_cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    with psycopg.connect(**pg_cluster.conninfo("primary"), autocommit=True) as conn:
        conn.execute(
            "CREATE OR REPLACE FUNCTION hotpath_f() RETURNS int LANGUAGE sql AS 'SELECT 1'"
        )
    pg_cluster.wait_for_replay()
    _configure(local_cluster, read_preference="secondary", strict_classification=False)
    sql = "SELECT hotpath_f() AS x"
    assert routing.execute("local", sql).role == "replica"
    assert routing.execute("local", sql).role == "replica"  # from the decision cache
    _configure(local_cluster, strict_classification=True)
    # Same text, now strict: an unknown function is a write, whatever was cached before.
    assert routing.execute("local", sql).role == "primary"


def test_the_decision_cache_is_bounded_and_decisions_stay_right(
    local_cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(router_module, "_DECISIONS_MAX", 3)
    _configure(local_cluster, read_preference="secondary")
    for n in range(8):
        assert routing.execute("local", f"SELECT {n} AS n").rows == [{"n": n}]
        assert routing.execute("local", f"SELECT {n} AS n").role == "replica"
    write = routing.execute("local", "SELECT 1 AS n", intent="write")
    assert write.role == "primary"
    router = routing.current_router()
    assert router is not None
    assert len(router._decisions) <= 3


def test_session_state_is_still_discarded_when_the_decision_is_cached(
    local_cluster: Cluster,
) -> None:
    _configure(local_cluster, read_preference="primary")
    for _ in range(3):
        routing.execute("local", "SET application_name = 'leaked'")
        shown = routing.execute("local", "SHOW application_name").rows[0]["application_name"]
        assert shown != "leaked"


def test_plain_options_are_shared_and_checked_ones_still_refuse_nonsense(
    local_cluster: Cluster,
) -> None:
    assert PLAIN_OPTIONS["write"] is PLAIN_OPTIONS[routing.Intent.WRITE]
    with pytest.raises(ValueError, match="intent must be one of"):
        routing.execute("local", "SELECT 1", intent="sideways")  # type: ignore[arg-type]
    router = routing.get_router()
    with pytest.raises(ValueError, match="intent must be one of"):
        router.execute("local", "SELECT 1", None, ExecuteOptions(intent="sideways"))
    with pytest.raises(TypeError, match="sql must be a string"):
        routing.execute("local", b"SELECT 1")  # type: ignore[arg-type]


def test_the_reused_cursor_keeps_no_result_and_results_stay_separate(
    local_cluster: Cluster,
) -> None:
    _configure(local_cluster, read_preference="primary")
    first = routing.execute("local", "SELECT g AS n FROM generate_series(1, 3) AS g")
    second = routing.execute("local", "SELECT 'x' AS s")
    assert first.rows == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert first.column_types == ["int4"]
    assert second.rows == [{"s": "x"}]
    assert second.status == "SELECT 1"
    router = routing.current_router()
    assert router is not None
    endpoint = router.topology.current().clusters["local"].by_name["primary"]
    pool = router.pools.peek(endpoint.id)
    assert pool is not None
    with pool.acquire() as conn:
        cursor = getattr(conn, "routed_cursor", None)
        assert cursor is not None
        assert cursor.pgresult is None  # the idle connection holds no result
    with pytest.raises(routing.QueryError):
        routing.execute("local", "SELECT 1/0")
    assert routing.execute("local", "SELECT 2 AS n").rows == [{"n": 2}]
