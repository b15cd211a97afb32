"""endpoints.routing against the real local cluster: a primary and two streaming replicas."""

from __future__ import annotations

import collections
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from endpoints import routing
from endpoints.control import sweep
from endpoints.core.purposes import ASSISTANT_READ, ASSISTANT_WRITE, Purpose
from endpoints.devstack.localcluster import LocalPostgresCluster
from endpoints.models import Cluster, Endpoint
from endpoints.routing import (
    ClusterNotFound,
    Intent,
    NoEndpointAvailable,
    QueryError,
    WriteOutcomeUnknown,
    topology,
)
from tests.helpers.cluster import terminate_backend_running
from tests.helpers.processes import run_manage

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_router")]

PORT_SQL = "SELECT current_setting('port')::int AS port, pg_is_in_recovery() AS in_recovery"


@pytest.fixture
def cluster(local_cluster: Cluster, pg_cluster: LocalPostgresCluster) -> Cluster:
    with psycopg.connect(**pg_cluster.conninfo("primary"), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS routing_t")
        conn.execute("CREATE TABLE routing_t (id serial PRIMARY KEY, note text)")
    pg_cluster.wait_for_replay()
    return local_cluster


def configure(cluster: Cluster, **fields: Any) -> None:
    Cluster.objects.filter(pk=cluster.pk).update(**fields)
    topology.notify_changed()


def configure_endpoint(cluster: Cluster, name: str, **fields: Any) -> None:
    Endpoint.objects.filter(cluster=cluster, name=name).update(**fields)
    topology.notify_changed()


def served_by(pg_cluster: LocalPostgresCluster, result: routing.QueryResult) -> str:
    """The node that really answered, from the server's own port (not the router's claim)."""
    port = result.rows[0]["port"]
    return next(node.name for node in pg_cluster.nodes if node.port == port)


def row_count(pg_cluster: LocalPostgresCluster) -> int:
    with psycopg.connect(**pg_cluster.conninfo("primary")) as conn:
        row = conn.execute("SELECT count(*) FROM routing_t").fetchone()
    assert row is not None
    return int(row[0])


# Reads, writes and preferences


def test_reads_go_to_replicas_under_secondary_preferred_and_writes_to_the_primary(
    cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    configure(cluster, read_preference="secondary_preferred")
    for _ in range(20):
        result = routing.execute("local", PORT_SQL)
        assert result.role == "replica"
        assert served_by(pg_cluster, result) == result.endpoint
        assert result.rows[0]["in_recovery"] is True

    with_params = routing.execute(
        "local",
        "SELECT %(n)s::int AS n, %(x)s::text AS x WHERE 'a' LIKE '%%'",
        {"n": 1, "x": "y"},
    )
    assert with_params.rows == [{"n": 1, "x": "y"}]
    assert with_params.role == "replica"  # psycopg placeholders do not make it look like a write

    write = routing.execute("local", "INSERT INTO routing_t (note) VALUES (%s) RETURNING id", ["a"])
    assert (write.endpoint, write.role) == ("primary", "primary")
    assert write.rowcount == 1
    assert write.rows[0]["id"] >= 1
    assert write.status == "INSERT 0 1"
    assert write.lsn is not None
    assert "/" in write.lsn

    locking = routing.execute("local", "SELECT id FROM routing_t FOR NO KEY UPDATE")
    assert locking.endpoint == "primary"
    cte = routing.execute(
        "local", "WITH moved AS (DELETE FROM routing_t RETURNING id) SELECT count(*) FROM moved"
    )
    assert cte.endpoint == "primary"
    assert cte.rows == [{"count": 1}]


def test_read_preferences_primary_secondary_and_intent_override(
    cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    configure(cluster, read_preference="primary")
    assert routing.execute("local", PORT_SQL).endpoint == "primary"
    secondary = routing.execute("local", PORT_SQL, read_preference="secondary")
    assert secondary.role == "replica"
    assert served_by(pg_cluster, secondary) == secondary.endpoint
    forced = routing.execute("local", PORT_SQL, intent="write")
    assert forced.endpoint == "primary"
    with pytest.raises(ValueError, match="read_preference must be one of"):
        routing.execute("local", "SELECT 1", read_preference="closest")
    with pytest.raises(ValueError, match="intent must be one of"):
        routing.execute("local", "SELECT 1", intent="maybe")  # type: ignore[arg-type]


def test_weighted_round_robin_over_1000_reads_matches_the_weights(
    cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    configure(cluster, read_preference="secondary", load_balancing="weighted_round_robin")
    configure_endpoint(cluster, "replica1", weight=300)
    configure_endpoint(cluster, "replica2", weight=100)
    counts: collections.Counter[str] = collections.Counter()
    for _ in range(1000):
        result = routing.execute("local", PORT_SQL)
        counts[served_by(pg_cluster, result)] += 1
    assert abs(counts["replica1"] / 1000 - 0.75) <= 0.05, counts
    assert abs(counts["replica2"] / 1000 - 0.25) <= 0.05, counts
    assert counts["primary"] == 0


def test_weight_zero_and_disabled_endpoints_get_no_reads(
    cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    configure(cluster, read_preference="secondary_preferred")
    configure_endpoint(cluster, "replica1", weight=0)
    configure_endpoint(cluster, "replica2", enabled=False)
    result = routing.execute("local", PORT_SQL)
    # No replica is eligible, so secondary_preferred falls back to the primary.
    assert served_by(pg_cluster, result) == "primary"
    with pytest.raises(NoEndpointAvailable) as caught:
        routing.execute("local", PORT_SQL, read_preference="secondary")
    assert "replica1: weight 0" in str(caught.value)
    assert "replica2: disabled" in str(caught.value)


# Lag, read-your-writes


def _set_replay(pg_cluster: LocalPostgresCluster, node: str, paused: bool) -> None:
    with psycopg.connect(**pg_cluster.conninfo(node), autocommit=True) as conn:
        conn.execute("SELECT pg_wal_replay_pause()" if paused else "SELECT pg_wal_replay_resume()")


def test_a_replica_with_replay_paused_beyond_the_lag_bound_gets_no_reads_until_resumed(
    cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    configure(cluster, read_preference="secondary", max_replica_lag_s=1.0)
    _set_replay(pg_cluster, "replica1", paused=True)
    try:
        routing.execute("local", "INSERT INTO routing_t (note) VALUES ('lag')")
        deadline = time.monotonic() + 20
        while True:
            observed = {o.endpoint.name: o.result.replay_lag_s for o in sweep(cluster)}
            if (observed["replica1"] or 0) > 1.0:
                break
            assert time.monotonic() < deadline, f"replica1 never lagged: {observed}"
            time.sleep(0.3)
        assert (observed["replica2"] or 0) <= 1.0
        served = {served_by(pg_cluster, routing.execute("local", PORT_SQL)) for _ in range(30)}
        assert served == {"replica2"}
        configure_endpoint(cluster, "replica2", enabled=False)
        with pytest.raises(NoEndpointAvailable, match=r"replica1: replication lag .* over"):
            routing.execute("local", PORT_SQL)
        configure_endpoint(cluster, "replica2", enabled=True)
    finally:
        _set_replay(pg_cluster, "replica1", paused=False)
    pg_cluster.wait_for_replay()
    sweep(cluster)
    served = {served_by(pg_cluster, routing.execute("local", PORT_SQL)) for _ in range(30)}
    assert served == {"replica1", "replica2"}


def test_read_your_writes_skips_replicas_that_have_not_replayed_the_write(
    cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    configure(cluster, read_preference="secondary_preferred", max_replica_lag_s=None)
    _set_replay(pg_cluster, "replica1", paused=True)
    try:
        write = routing.execute("local", "INSERT INTO routing_t (note) VALUES ('ryw') RETURNING id")
        assert write.lsn
        for _ in range(10):
            read = routing.execute(
                "local",
                "SELECT current_setting('port')::int AS port, count(*) AS n FROM routing_t",
                min_lsn=write.lsn,
            )
            assert served_by(pg_cluster, read) != "replica1"
            assert read.rows[0]["n"] == 1
        _set_replay(pg_cluster, "replica2", paused=True)
        write = routing.execute("local", "INSERT INTO routing_t (note) VALUES ('ryw2')")
        # No replica has this write: secondary_preferred falls back to the primary.
        read = routing.execute("local", PORT_SQL, min_lsn=write.lsn)
        assert served_by(pg_cluster, read) == "primary"
        with pytest.raises(NoEndpointAvailable, match="has not replayed LSN"):
            routing.execute("local", PORT_SQL, min_lsn=write.lsn, read_preference="secondary")
    finally:
        _set_replay(pg_cluster, "replica1", paused=False)
        _set_replay(pg_cluster, "replica2", paused=False)
    pg_cluster.wait_for_replay()


# Failures: stopped replica, circuit breaker, killed write, dead idle connections


def test_a_stopped_replica_opens_its_circuit_reads_continue_and_it_closes_after_restart(
    cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    configure(
        cluster,
        read_preference="secondary",
        load_balancing="round_robin",
        circuit_failure_threshold=2,
        circuit_cooldown_s=0.5,
        retry_initial_delay_ms=10,
        retry_max_delay_ms=50,
    )
    for _ in range(6):  # warm both replicas' pools
        routing.execute("local", PORT_SQL)
    pg_cluster.stop_node("replica1", mode="immediate")
    try:
        for _ in range(30):
            result = routing.execute("local", PORT_SQL)
            assert served_by(pg_cluster, result) == "replica2"
        circuit = routing.stats("local").endpoints["replica1"].circuit
        assert circuit.state in ("open", "half_open")
        assert circuit.opened_count >= 1
        assert routing.stats("local").endpoints["replica1"].errors >= 2
    finally:
        pg_cluster.start()
    deadline = time.monotonic() + 15
    served: set[str] = set()
    while "replica1" not in served:
        assert time.monotonic() < deadline, "reads never returned to the restarted replica"
        served.add(served_by(pg_cluster, routing.execute("local", PORT_SQL)))
        time.sleep(0.05)
    assert routing.stats("local").endpoints["replica1"].circuit.state == "closed"


def test_a_write_interrupted_by_a_killed_backend_is_reported_unknown_and_not_retried(
    cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    outcome: dict[str, BaseException] = {}

    def slow_insert() -> None:
        try:
            routing.execute("local", "INSERT INTO routing_t (note) SELECT 'slow' FROM pg_sleep(3)")
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=slow_insert)
    worker.start()
    terminate_backend_running(pg_cluster, "INSERT INTO routing_t%pg_sleep%")
    worker.join(10)
    error = outcome.get("error")
    assert isinstance(error, WriteOutcomeUnknown), repr(error)
    assert "may or may not have been applied" in str(error)
    assert error.endpoint == "primary"
    assert pg_cluster.password not in str(error)
    assert row_count(pg_cluster) == 0  # not applied, and above all not applied twice
    assert routing.stats("local").endpoints["primary"].retries == 0
    # The next write gets a fresh connection and works.
    assert routing.execute("local", "INSERT INTO routing_t (note) VALUES ('after')").rowcount == 1


def test_connections_that_died_while_idle_are_discarded_without_an_error(
    cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    configure(cluster, read_preference="primary")
    configure_endpoint(cluster, "primary", pool_min_size=3, pool_max_size=3)
    for _ in range(5):
        routing.execute("local", "SELECT 1")
    with psycopg.connect(**pg_cluster.conninfo("primary"), autocommit=True) as admin:
        killed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'pgwarden' AND pid <> pg_backend_pid()"
        ).fetchone()
    assert killed
    assert killed[0] >= 1
    time.sleep(0.2)
    result = routing.execute("local", "SELECT 1 AS one")
    assert result.rows == [{"one": 1}]
    assert result.attempts == 1  # no retry was needed: the dead ones never reached the caller
    assert routing.stats("local").endpoints["primary"].errors == 0


def test_no_connection_leaks_after_10000_mixed_requests_from_8_threads(
    cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    configure(cluster, read_preference="secondary_preferred")
    for name in ("primary", "replica1", "replica2"):
        configure_endpoint(cluster, name, pool_min_size=1, pool_max_size=3)
    errors: list[BaseException] = []

    def client(index: int) -> None:
        try:
            for n in range(1250):
                if n % 10 == 0:
                    routing.execute(
                        "local", "INSERT INTO routing_t (note) VALUES (%s)", [f"{index}"]
                    )
                elif n % 10 == 1:
                    with pytest.raises(QueryError):
                        routing.execute("local", "SELECT * FROM no_such_table")
                elif n % 10 == 2:
                    with routing.connection("local") as conn:
                        conn.execute("SELECT 1").fetchone()
                else:
                    routing.execute("local", "SELECT %s::int AS n", [n])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors[:3]
    stats = routing.stats("local")
    assert stats.totals.requests >= 10_000
    for name, endpoint in stats.endpoints.items():
        pool = endpoint.pool
        assert pool is not None, name
        assert pool.in_use == 0, (name, pool)
        assert pool.size <= 3, (name, pool)
    assert row_count(pg_cluster) == 8 * 125
    for node in pg_cluster.nodes:
        with psycopg.connect(**pg_cluster.conninfo(node)) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgwarden'"
            ).fetchone()
        assert row is not None
        assert row[0] <= 3, (node.name, row)


# Transactions and raw connections


def test_transaction_commits_all_or_nothing_and_names_the_failing_statement(
    cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    results = routing.transaction(
        "local",
        [
            ("INSERT INTO routing_t (note) VALUES (%s) RETURNING id", ["one"]),
            ("INSERT INTO routing_t (note) VALUES (%s) RETURNING id", ["two"]),
            ("SELECT count(*) AS n FROM routing_t", None),
        ],
    )
    assert [r.endpoint for r in results] == ["primary"] * 3
    assert results[2].rows == [{"n": 2}]
    with pytest.raises(QueryError) as caught:
        routing.transaction(
            "local",
            [
                ("INSERT INTO routing_t (note) VALUES ('three')", None),
                ("INSERT INTO routing_t (id, note) VALUES (1, 'duplicate')", None),
            ],
        )
    assert caught.value.sqlstate == "23505"
    assert caught.value.statement_index == 1
    assert str(caught.value).startswith("statement 2:")
    assert row_count(pg_cluster) == 2  # 'three' was rolled back with the failure

    configure(cluster, read_preference="secondary")
    read_only = routing.transaction("local", [(PORT_SQL, None)], read_only=True)
    assert read_only[0].role == "replica"
    with pytest.raises(QueryError) as refused:
        routing.transaction(
            "local", [("INSERT INTO routing_t (note) VALUES ('x')", None)], read_only=True
        )
    assert refused.value.sqlstate == "25006"
    with pytest.raises(ValueError, match="at least one statement"):
        routing.transaction("local", [])


def test_raw_connection_session_changes_do_not_leak_to_the_next_caller(
    cluster: Cluster,
) -> None:
    configure(cluster, read_preference="primary")
    configure_endpoint(cluster, "primary", pool_min_size=1, pool_max_size=1)
    with routing.connection("local", intent="write") as conn:
        conn.execute("SET work_mem = '77MB'")
        conn.autocommit = False
        conn.execute("INSERT INTO routing_t (note) VALUES ('uncommitted')")
    with routing.connection("local", intent="write") as conn:
        row = conn.execute("SHOW work_mem").fetchone()
        assert row is not None
        assert row[0] != "77MB"
        assert conn.autocommit is True
        count = conn.execute("SELECT count(*) FROM routing_t").fetchone()
        assert count is not None
        assert count[0] == 0


# Errors


def test_errors_name_the_problem_and_never_the_password(
    cluster: Cluster, pg_cluster: LocalPostgresCluster, closed_port: int
) -> None:
    with pytest.raises(ClusterNotFound, match="known clusters: local"):
        routing.execute("nope", "SELECT 1")
    with pytest.raises(QueryError) as syntax:
        routing.execute("local", "SELEC 1")
    assert syntax.value.sqlstate == "42601"
    assert "syntax error" in str(syntax.value)
    assert syntax.value.endpoint == "primary"  # does not parse, so treated as a write
    with pytest.raises(QueryError) as timeout:
        routing.execute("local", "SELECT pg_sleep(2)", timeout_ms=100)
    assert timeout.value.sqlstate == "57014"

    configure(cluster, retry_max_attempts=2, retry_initial_delay_ms=10, retry_max_delay_ms=10)
    configure_endpoint(cluster, "primary", port=closed_port)
    with pytest.raises(NoEndpointAvailable) as caught:
        routing.execute("local", "INSERT INTO routing_t (note) VALUES ('x')")
    message = str(caught.value)
    assert "primary:" in message
    assert "after 2 attempts" in message
    assert "refused" in message or "failed" in message
    assert pg_cluster.password not in message
    assert pg_cluster.password not in repr(caught.value.reasons)
    with pytest.raises(NoEndpointAvailable):
        routing.execute("local", "INSERT INTO routing_t (note) VALUES ('x')")
    # Three failures opened the circuit: now nothing is tried, and the message says why.
    with pytest.raises(NoEndpointAvailable, match=r"primary: circuit open .*last error: .*refused"):
        routing.execute("local", "INSERT INTO routing_t (note) VALUES ('x')")


def test_max_rows_truncates_and_columns_carry_types(cluster: Cluster) -> None:
    result = routing.execute(
        "local", "SELECT g AS n, g::text AS label FROM generate_series(1, 1000) g", max_rows=10
    )
    assert result.truncated is True
    assert [row["n"] for row in result.rows] == list(range(1, 11))
    assert result.columns == ["n", "label"]
    assert result.column_types == ["int4", "text"]
    whole = routing.execute("local", "SELECT 1 AS n", max_rows=10)
    assert whole.truncated is False
    assert whole.rows == [{"n": 1}]


# Topology across processes


def test_a_registry_change_in_another_process_redirects_writes_within_one_second(
    cluster: Cluster,
) -> None:
    assert routing.execute("local", "SELECT 1", intent="write").endpoint == "primary"
    script = (
        "import time\n"
        "from django.db import transaction\n"
        "from endpoints.models import Endpoint\n"
        "with transaction.atomic():\n"
        "    Endpoint.objects.filter(name='primary').update(role='replica')\n"
        "    e = Endpoint.objects.get(name='replica2'); e.role = 'primary'; e.save()\n"
        "print(time.time())\n"
    )
    process = run_manage("shell", "-c", script)
    changed_at = float(process.stdout.strip().splitlines()[-1])
    while True:
        endpoint = routing.execute("local", "SELECT 1", intent="write").endpoint
        if endpoint == "replica2":
            break
        assert time.time() - changed_at < 1.0, "the router still sends writes to the old primary"
        time.sleep(0.01)
    assert time.time() - changed_at < 1.0


def test_stats_report_per_endpoint_and_totals(cluster: Cluster) -> None:
    configure(cluster, read_preference="primary")
    for _ in range(5):
        routing.execute("local", "SELECT 1")
    stats = routing.stats("local")
    primary = stats.endpoints["primary"]
    assert primary.requests == 5
    assert primary.errors == 0
    assert primary.latency_avg_ms is not None
    assert primary.latency_avg_ms > 0
    assert primary.latency_p95_ms is not None
    assert primary.latency_p95_ms > 0
    assert primary.circuit.state == "closed"
    assert primary.pool is not None
    assert primary.pool.in_use == 0
    assert primary.pool.size >= 1
    totals = stats.totals
    assert totals.requests == 5
    assert totals.endpoints == 3
    assert totals.available_endpoints == 3
    assert totals.total_connections >= 1
    assert totals.average_response_ms is not None
    assert totals.average_response_ms > 0
    # The JSON shape the admin and the MCP tools show: the same data as plain dicts.
    as_json = stats.as_json()
    assert as_json["endpoints"]["primary"]["pool"]["size"] == primary.pool.size
    assert as_json["totals"]["requests"] == 5


# Classification details that change where a query runs


def test_strict_mode_sends_unknown_functions_to_the_primary_and_refused_reads_are_rerouted(
    cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    with psycopg.connect(**pg_cluster.conninfo("primary"), autocommit=True) as conn:
        conn.execute(
            "CREATE OR REPLACE FUNCTION routing_note(text) RETURNS bigint LANGUAGE sql AS "
            "$$ INSERT INTO routing_t (note) VALUES ($1) RETURNING id $$"
        )
    pg_cluster.wait_for_replay()
    configure(cluster, read_preference="secondary")
    # Not strict: the parser cannot know routing_note() writes, so the read goes to a
    # replica, which refuses it (25006) without effect; it then runs once on the primary.
    result = routing.execute("local", "SELECT routing_note('once') AS id")
    assert result.endpoint == "primary"
    assert row_count(pg_cluster) == 1
    # With an explicit intent there is no second guess: the caller said read.
    with pytest.raises(QueryError) as refused:
        routing.execute("local", "SELECT routing_note('never')", intent="read")
    assert refused.value.sqlstate == "25006"
    assert row_count(pg_cluster) == 1

    configure(cluster, strict_classification=True)
    strict = routing.execute("local", "SELECT routing_note('strict') AS id")
    assert strict.endpoint == "primary"
    assert strict.attempts == 1  # classified as a write up front, no detour via a replica
    assert routing.execute("local", "SELECT lower('X') AS x").role == "replica"


def test_the_cluster_admin_page_shows_this_process_routing_stats(
    cluster: Cluster, admin_client: Any
) -> None:
    configure(cluster, read_preference="primary")
    for _ in range(3):
        routing.execute("local", "SELECT 1")
    response = admin_client.get(f"/admin/endpoints/cluster/{cluster.pk}/change/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "Routing statistics (this web process)" in page
    assert 'class="pgw-routing-stats"' in page
    assert "<td>primary</td><td>primary</td>" in page
    assert "Totals: 3 requests, 0 errors, 0 retries; 3 of 3 endpoints available" in page


def test_a_forked_child_builds_its_own_router_and_pools(cluster: Cluster) -> None:
    configure(cluster, read_preference="primary")
    routing.execute("local", "SELECT 1")
    parent_router = routing.get_router()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running pytest's cleanup
        try:
            fresh = routing.get_router() is not parent_router
            rows = routing.execute("local", "SELECT 7 AS n").rows
            os.write(write_end, f"{fresh} {rows}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    report = os.read(read_end, 1000).decode()
    os.close(read_end)
    assert status == 0
    assert report == "True [{'n': 7}]"
    assert routing.execute("local", "SELECT 1 AS one").rows == [{"one": 1}]


def _node_processes(pg_cluster: LocalPostgresCluster, node: str) -> list[int]:
    """The postmaster of ``node`` and every server process it started."""
    postmaster = int((pg_cluster.node(node).data_dir / "postmaster.pid").read_text().split()[0])
    children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
    return [postmaster, *map(int, children)]


def test_a_hung_replica_costs_one_deadline_then_reads_move_on(
    cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    configure(
        cluster,
        read_preference="secondary",
        load_balancing="round_robin",
        statement_timeout_ms=300,
        connect_timeout_s=2,
        retry_initial_delay_ms=10,
        retry_max_delay_ms=10,
    )
    for _ in range(4):
        routing.execute("local", PORT_SQL)
    frozen = _node_processes(pg_cluster, "replica1")
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        for _ in range(4):
            result = routing.execute("local", PORT_SQL)
            assert served_by(pg_cluster, result) == "replica2"
        # Without the watchdog the first read sent to replica1 would wait forever.
        assert time.monotonic() - started < 30
        replica1 = routing.stats("local").endpoints["replica1"]
        assert replica1.errors >= 1
        assert routing.stats("local").endpoints["replica2"].retries >= 1
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)


def test_endpoints_added_and_removed_take_effect_without_restart(
    cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    from endpoints.routing.pools import registry

    configure(cluster, read_preference="secondary", load_balancing="round_robin")
    served = {served_by(pg_cluster, routing.execute("local", PORT_SQL)) for _ in range(6)}
    assert served == {"replica1", "replica2"}
    removed = Endpoint.objects.get(cluster=cluster, name="replica2")
    removed_id = removed.pk
    assert registry.peek(removed_id) is not None
    removed.delete()  # as the admin's delete does: signals publish the change
    results = [routing.execute("local", PORT_SQL) for _ in range(6)]
    assert {r.endpoint for r in results} == {"replica1"}
    assert registry.peek(removed_id) is None  # its pool was drained and closed

    replica2 = pg_cluster.node("replica2")
    added = Endpoint(
        cluster=cluster,
        name="replica2b",
        host=replica2.host,
        port=replica2.port,
        dbname=pg_cluster.dbname,
        user=pg_cluster.user,
        sslmode="disable",
        weight=100,
    )
    added.set_password(pg_cluster.password)
    added.save()
    results = [routing.execute("local", PORT_SQL) for _ in range(6)]
    assert {r.endpoint for r in results} == {"replica1", "replica2b"}
    assert {served_by(pg_cluster, r) for r in results if r.endpoint == "replica2b"} == {"replica2"}


def test_read_only_refuses_a_write_the_classifier_cannot_see(
    cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    # A view whose function writes: the SQL text reads, the execution would write.
    with psycopg.connect(**pg_cluster.conninfo("primary"), autocommit=True) as conn:
        conn.execute(
            "CREATE OR REPLACE FUNCTION routing_sneaky() RETURNS int LANGUAGE sql AS "
            "$$ INSERT INTO routing_t (note) VALUES ('sneaky') RETURNING id $$"
        )
        conn.execute("CREATE OR REPLACE VIEW routing_sneaky_v AS SELECT routing_sneaky() AS id")
    configure(cluster, read_preference="primary")

    with pytest.raises(QueryError) as refused:
        routing.execute("local", "SELECT id FROM routing_sneaky_v", read_only=True)

    assert refused.value.sqlstate == "25006"  # read_only_sql_transaction
    assert row_count(pg_cluster) == 0
    # Without it, the same read (on the primary) writes: the guard is what stopped it.
    routing.execute("local", "SELECT id FROM routing_sneaky_v")
    assert row_count(pg_cluster) == 1
    # A plain read in read-only mode still answers, and leaves no transaction open.
    result = routing.execute("local", "SELECT count(*) AS n FROM routing_t", read_only=True)
    assert result.rows == [{"n": 1}]
    with pytest.raises(ValueError, match="read_only"):
        routing.execute("local", "SELECT 1", intent="write", read_only=True)


def test_session_state_never_reaches_the_next_caller_of_a_pooled_connection(
    cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    configure(cluster, read_preference="primary")
    routing.execute("local", "SELECT 1")  # one pooled connection to the primary, warm
    default = routing.execute("local", "SHOW search_path").rows

    routing.execute("local", "SET search_path = nowhere")
    routing.execute("local", "SELECT set_config('application_name', 'leaked', false)")
    routing.execute("local", "SELECT pg_advisory_lock(4242)")
    routing.transaction("local", [("SET statement_timeout = 1", None)])

    # Whatever connection serves these, none carries what the calls above set.
    for _ in range(5):
        assert routing.execute("local", "SHOW search_path").rows == default
        assert routing.execute("local", "SHOW application_name").rows != [
            {"application_name": "leaked"}
        ]
        assert routing.execute("local", "SHOW statement_timeout").rows != [
            {"statement_timeout": "1ms"}
        ]
    with psycopg.connect(**pg_cluster.conninfo("primary")) as conn:
        held = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242"
        ).fetchone()
    assert held == (0,)  # released with the session that took it


# Named cursors only: the statement running the query holds the unnamed portal.
CURSORS_SQL = "SELECT name FROM pg_cursors WHERE name <> ''"


def test_a_read_only_select_runs_as_a_cursor_that_stops_at_max_rows_and_leaves_nothing_open(
    cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    configure(cluster, read_preference="primary")
    # What the statement sees: a READ ONLY transaction with the timeout, its parameters bound.
    result = routing.execute(
        "local",
        "SELECT current_setting('transaction_read_only') AS ro, "
        "current_setting('statement_timeout') AS timeout, %s::int + 1 AS answer, "
        "current_setting('cursor_tuple_fraction') AS fraction",
        [41],
        read_only=True,
        timeout_ms=1500,
        max_rows=10,
    )
    # fraction 1: the cursor gets the plan the statement gets on its own (and explain shows).
    assert result.rows == [{"ro": "on", "timeout": "1500ms", "answer": 42, "fraction": "1"}]
    assert result.column_types == ["text", "text", "int4", "text"]
    assert result.status == "SELECT 1"
    # The query is the pipeline's cursor (so the server computes no more than it returns).
    cursors = routing.execute("local", CURSORS_SQL, read_only=True, max_rows=5)
    assert cursors.rows == [{"name": "pgwarden_read"}]

    # 1000 rows at 50 ms each would outlive the 5 s timeout; only max_rows + 1 are produced.
    slow = routing.execute(
        "local",
        "SELECT g FROM generate_series(1, 1000) AS g WHERE pg_sleep(0.05) IS NOT NULL",
        read_only=True,
        timeout_ms=5000,
        max_rows=3,
    )
    assert slow.rows == [{"g": 1}, {"g": 2}, {"g": 3}]
    assert slow.truncated

    # Errors while declaring, while fetching, and the timeout: each reported as itself...
    with pytest.raises(QueryError) as missing:
        routing.execute("local", "SELECT * FROM no_such_table", read_only=True, max_rows=5)
    assert missing.value.sqlstate == "42P01"
    assert 'relation "no_such_table" does not exist' in str(missing.value)
    with pytest.raises(QueryError) as late:
        routing.execute(
            "local",
            "SELECT 1 / (g - 3) FROM generate_series(1, 5) AS g",
            read_only=True,
            max_rows=9,
        )
    assert late.value.sqlstate == "22012"  # division_by_zero, raised by FETCH
    with pytest.raises(QueryError) as slow_error:
        routing.execute("local", "SELECT pg_sleep(5)", read_only=True, timeout_ms=200, max_rows=5)
    assert slow_error.value.sqlstate == "57014"  # query_canceled by statement_timeout

    # ...and none leaves a transaction or the cursor behind on a pooled connection.
    for _ in range(5):
        again = routing.execute("local", CURSORS_SQL, read_only=True, max_rows=5)
        assert again.rows == [{"name": "pgwarden_read"}]
    with psycopg.connect(**pg_cluster.conninfo("primary"), autocommit=True) as conn:
        open_transactions = conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE state LIKE 'idle in transaction%%' AND pid <> pg_backend_pid()"
        ).fetchone()
    assert open_transactions == (0,)


def test_sql_errors_on_the_cursor_path_stay_sql_errors_however_often_they_come(
    cluster: Cluster,
) -> None:
    """An error is reported by the endpoint that raised it, never taken for a lost connection.

    psycopg prepares a statement it has run five times; in a pipeline that a failing
    statement aborts, a PREPARE is skipped with the rest, and a later ROLLBACK once failed
    on the missing statement: the connection was closed, the read retried on a replica,
    and the failure counted against the primary's circuit.
    """
    configure(cluster, read_preference="primary_preferred")
    for attempt in range(12):
        with pytest.raises(QueryError) as raised:
            routing.execute("local", f"SELECT 'x{attempt}'::int", read_only=True, max_rows=5)
        assert (raised.value.endpoint, raised.value.sqlstate) == ("primary", "22P02")
    stats = routing.stats("local").endpoints
    assert stats["primary"].errors == 0
    assert stats["primary"].circuit.consecutive_failures == 0
    assert stats["replica1"].requests + stats["replica2"].requests == 0
    assert routing.execute("local", "SELECT 1 AS one", read_only=True, max_rows=5).rows == [
        {"one": 1}
    ]


def test_assistant_routers_never_use_the_simple_protocol(cluster: Cluster) -> None:
    """Two statements in one string: the operations router runs both, an assistant's none."""
    stacked = "SELECT 1 AS one; SELECT 2 AS two"
    assert routing.execute("local", stacked, intent="read").rows == [{"two": 2}]

    intents: tuple[tuple[Purpose, Intent], ...] = (
        (ASSISTANT_READ, Intent.READ),
        (ASSISTANT_WRITE, Intent.WRITE),
    )
    for purpose, intent in intents:
        with pytest.raises(QueryError, match="cannot insert multiple commands"):
            routing.execute("local", stacked, intent=intent, purpose=purpose)
        with pytest.raises(QueryError, match="cannot insert multiple commands"):
            routing.transaction("local", [(stacked, None)], purpose=purpose)
        # Settings every assistant session starts with, whatever the role's own.
        result = routing.execute(
            "local",
            "SELECT current_setting('standard_conforming_strings') AS scs, "
            "current_setting('application_name') AS app",
            intent="read",
            purpose=purpose,
        )
        assert result.rows == [{"scs": "on", "app": "pgwarden-assistant"}]


def test_a_byte_cap_stops_the_server_at_the_row_that_would_pass_it(cluster: Cluster) -> None:
    configure(cluster, read_preference="primary")
    rows_sql = "SELECT g, repeat('z', 1000) AS pad FROM generate_series(1, 50) AS g ORDER BY g"

    whole = routing.execute("local", rows_sql, read_only=True, max_rows=50, max_bytes=1_000_000)
    assert [row["g"] for row in whole.rows] == list(range(1, 51))
    assert whole.columns == ["g", "pad"]  # the cap's own column is not the caller's
    assert not whole.truncated

    # Each row is about 1 KB as text: a 10 KB cap keeps the first nine, in order.
    capped = routing.execute("local", rows_sql, read_only=True, max_rows=50, max_bytes=10_000)
    assert capped.truncated
    assert [row["g"] for row in capped.rows] == list(range(1, len(capped.rows) + 1))
    assert 8 <= len(capped.rows) <= 9
    assert capped.column_types == ["int4", "text"]

    # A first row over the cap alone: nothing of it is fetched, and the answer says so.
    huge = routing.execute(
        "local", "SELECT repeat('x', 5000000) AS big", read_only=True, max_rows=5, max_bytes=1000
    )
    assert (huge.rows, huge.truncated) == ([], True)

    # Trailing semicolons and comments of the statement do not break the wrapping.
    tail = routing.execute(
        "local", "SELECT 1 AS one; -- done", read_only=True, max_rows=5, max_bytes=1000
    )
    assert tail.rows == [{"one": 1}]
    # The query's own errors stay its own.
    with pytest.raises(QueryError, match="22012"):
        routing.execute("local", "SELECT 1/0", read_only=True, max_rows=5, max_bytes=1000)


def test_statements_postgresql_runs_only_outside_a_transaction_run_with_their_timeout(
    cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    configure(cluster, read_preference="primary")
    routing.execute("local", "INSERT INTO routing_t (note) VALUES ('a'), ('b')")
    default = routing.execute("local", "SHOW statement_timeout").rows

    # With a timeout a statement runs in a transaction (SET LOCAL); these cannot.
    vacuum = routing.execute(
        "local", "VACUUM (ANALYZE) routing_t", intent="write", timeout_ms=29_999, max_rows=10
    )
    assert vacuum.status == "VACUUM"
    created = routing.execute(
        "local",
        "CREATE INDEX CONCURRENTLY routing_t_note ON routing_t (note)",
        timeout_ms=29_999,
    )
    assert created.endpoint == "primary"
    with psycopg.connect(**pg_cluster.conninfo("primary"), autocommit=True) as conn:
        valid = conn.execute(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'routing_t_note'::regclass"
        ).fetchone()
        assert valid == (True,)
        analyzed = conn.execute(
            "SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables WHERE relname = 'routing_t'"
        ).fetchone()
        assert analyzed == (True,)

        # The timeout still holds: waiting on a lock another session holds, it is cancelled.
        with psycopg.connect(**pg_cluster.conninfo("primary")) as locker:
            locker.execute("LOCK TABLE routing_t IN SHARE UPDATE EXCLUSIVE MODE")
            started = time.monotonic()
            with pytest.raises(QueryError) as cancelled:
                routing.execute("local", "DROP INDEX CONCURRENTLY routing_t_note", timeout_ms=300)
            assert cancelled.value.sqlstate == "57014"  # query_canceled
            assert time.monotonic() - started < 10
        still_there = conn.execute("SELECT to_regclass('routing_t_note') IS NOT NULL").fetchone()
        assert still_there == (True,)

    # The session timeout those needed never reaches the next caller of the pool.
    for _ in range(5):
        assert routing.execute("local", "SHOW statement_timeout").rows == default
