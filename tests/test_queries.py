"""services.queries against the real local cluster: a primary and two streaming replicas."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from endpoints import routing
from endpoints.devstack.localcluster import LocalPostgresCluster
from endpoints.models import Cluster
from endpoints.routing import QueryError
from endpoints.services import queries
from endpoints.services.sqlguard import Refused
from tests.helpers.cluster import terminate_backend_running

pytestmark = pytest.mark.django_db(transaction=True)

NODES = {"primary", "replica1", "replica2"}


@pytest.fixture(autouse=True)
def table(
    redis_server: Any, local_cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> Iterator[None]:
    routing.reset_router()
    with psycopg.connect(**pg_cluster.conninfo("primary"), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS queries_t")
        conn.execute("CREATE TABLE queries_t (id int PRIMARY KEY, note text NOT NULL)")
        conn.execute("INSERT INTO queries_t SELECT g, 'row ' || g FROM generate_series(1, 5) g")
    pg_cluster.wait_for_replay()
    yield
    routing.reset_router()


def notes(pg_cluster: LocalPostgresCluster) -> dict[int, str]:
    with psycopg.connect(**pg_cluster.conninfo("primary")) as conn:
        return dict(conn.execute("SELECT id, note FROM queries_t ORDER BY id").fetchall())


ORIGINAL = {i: f"row {i}" for i in range(1, 6)}


# read_query


def test_read_query_returns_columns_rows_and_where_it_ran() -> None:
    result = queries.read_query(
        "local", "SELECT id, note FROM queries_t ORDER BY id LIMIT 2"
    ).as_json()
    assert result["columns"] == [{"name": "id", "type": "int4"}, {"name": "note", "type": "text"}]
    assert result["rows"] == [{"id": 1, "note": "row 1"}, {"id": 2, "note": "row 2"}]
    assert result["row_count"] == 2
    assert result["truncated"] is False
    assert result["endpoint"] in NODES
    assert result["role"] in ("primary", "replica")
    assert isinstance(result["elapsed_ms"], float)

    replica = queries.read_query(
        "local", "SELECT pg_is_in_recovery() AS standby", read_preference="secondary"
    ).as_json()
    assert (replica["role"], replica["rows"]) == ("replica", [{"standby": True}])
    assert replica["endpoint"] in ("replica1", "replica2")


def test_read_query_takes_params_as_a_list_or_an_object() -> None:
    listed = queries.read_query("local", "SELECT note FROM queries_t WHERE id = %s", [3]).as_json()
    assert listed["rows"] == [{"note": "row 3"}]
    named = queries.read_query(
        "local",
        "SELECT note FROM queries_t WHERE id = %(id)s AND note LIKE %(pattern)s",
        {"id": 4, "pattern": "row%"},
    ).as_json()
    assert named["rows"] == [{"note": "row 4"}]


def test_read_query_stops_at_max_rows() -> None:
    result = queries.read_query(
        "local", "SELECT generate_series(1, 2000) AS n", max_rows=100
    ).as_json()
    assert result["row_count"] == 100
    assert [row["n"] for row in result["rows"]] == list(range(1, 101))
    assert result["truncated"] is True
    exact = queries.read_query(
        "local", "SELECT generate_series(1, 100) AS n", max_rows=100
    ).as_json()
    assert (exact["row_count"], exact["truncated"]) == (100, False)


def test_read_query_stops_at_max_bytes() -> None:
    result = queries.read_query(
        "local", "SELECT repeat('x', 1000) AS r FROM generate_series(1, 100)", max_bytes=10_000
    ).as_json()
    # Each row is {"r":"xxx..."}: 1008 bytes of JSON, so 9 fit in 10,000.
    assert result["row_count"] == 9
    assert result["truncated"] is True


def test_read_query_is_cut_off_at_its_timeout_and_the_next_one_works() -> None:
    started = time.monotonic()
    with pytest.raises(routing.QueryError) as caught:
        queries.read_query("local", "SELECT pg_sleep(3)", timeout_ms=500).as_json()
    assert caught.value.sqlstate == "57014"
    assert "statement timeout" in str(caught.value)
    assert time.monotonic() - started < 1.5
    assert queries.read_query("local", "SELECT 1 AS one").as_json()["rows"] == [{"one": 1}]


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"max_rows": -1}, "max_rows"),
        ({"max_rows": 0}, "max_rows"),
        ({"max_rows": 10**9}, "max_rows"),
        ({"max_rows": "10"}, "max_rows"),
        ({"max_rows": True}, "max_rows"),
        ({"timeout_ms": 0}, "timeout_ms"),
        ({"timeout_ms": 10**9}, "timeout_ms"),
        ({"timeout_ms": 1.5}, "timeout_ms"),
        ({"max_bytes": 0}, "max_bytes"),
        ({"params": "x"}, "params"),
        ({"params": 5}, "params"),
        ({"params": {1: "x"}}, "params"),
        ({"sql": ""}, "sql"),
        ({"sql": "   "}, "sql"),
        ({"sql": None}, "sql"),
        ({"cluster": ""}, "cluster"),
        ({"cluster": None}, "cluster"),
    ],
)
def test_read_query_names_the_bad_argument(arguments: dict[str, Any], named: str) -> None:
    call: dict[str, Any] = {"cluster": "local", "sql": "SELECT 1", **arguments}
    with pytest.raises(ValueError, match=rf"^{named}\b"):
        queries.read_query(**call).as_json()


def test_read_query_refuses_writes_and_unknown_clusters() -> None:
    with pytest.raises(Refused, match="DELETE modifies data; query only reads"):
        queries.read_query("local", "DELETE FROM queries_t").as_json()
    with pytest.raises(routing.ClusterNotFound):
        queries.read_query("nowhere", "SELECT 1").as_json()


# write_statement


def test_write_statement_commits_and_returns_the_returning_rows(
    pg_cluster: LocalPostgresCluster,
) -> None:
    result = queries.write_statement(
        "local", "INSERT INTO queries_t VALUES (%s, %s) RETURNING id, note", [10, "ten"]
    ).as_json()
    assert result["rows_affected"] == 1
    assert result["rows"] == [{"id": 10, "note": "ten"}]
    assert result["columns"] == [{"name": "id", "type": "int4"}, {"name": "note", "type": "text"}]
    assert result["truncated"] is False
    assert result["status"] == "INSERT 0 1"
    assert (result["endpoint"], result["role"]) == ("primary", "primary")
    assert "/" in result["lsn"]
    assert notes(pg_cluster)[10] == "ten"

    update = queries.write_statement("local", "UPDATE queries_t SET note = upper(note)").as_json()
    assert (update["rows_affected"], update["status"], update["rows"]) == (6, "UPDATE 6", [])
    # A read asking for the write's position sees it, wherever it goes.
    after = routing.execute(
        "local", "SELECT note FROM queries_t WHERE id = 10", min_lsn=update["lsn"]
    )
    assert after.rows == [{"note": "TEN"}]


def test_write_statement_caps_returning_rows() -> None:
    result = queries.write_statement(
        "local",
        "INSERT INTO queries_t SELECT g, 'bulk' FROM generate_series(100, 1099) g RETURNING id",
    ).as_json()
    assert result["rows_affected"] == 1000
    assert len(result["rows"]) == queries.DEFAULT_MAX_ROWS
    assert result["truncated"] is True


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("BEGIN", "transaction control is not allowed; use transaction"),
        ("COMMIT", "transaction control is not allowed"),
        (
            "INSERT INTO queries_t VALUES (20, 'a'); INSERT INTO queries_t VALUES (21, 'b')",
            "only one statement at a time (found 2)",
        ),
        ("SET search_path = nowhere", "SET changes session state"),
        ("COPY queries_t FROM STDIN", "COPY is not supported"),
        ("INSERT INTO queries_t SELECT 30, pg_read_file('/etc/hostname')", "pg_read_file()"),
    ],
)
def test_write_statement_refuses_what_is_not_one_plain_statement(
    pg_cluster: LocalPostgresCluster, sql: str, reason: str
) -> None:
    with pytest.raises(Refused, match=re.escape(reason)):
        queries.write_statement("local", sql).as_json()
    assert notes(pg_cluster) == ORIGINAL


def test_write_statement_reports_sql_errors_and_bad_arguments() -> None:
    with pytest.raises(routing.QueryError) as caught:
        queries.write_statement("local", "INSERT INTO queries_t VALUES (1, 'duplicate')").as_json()
    assert caught.value.sqlstate == "23505"
    with pytest.raises(ValueError, match=r"^timeout_ms"):
        queries.write_statement("local", "DELETE FROM queries_t", timeout_ms=-5).as_json()
    with pytest.raises(ValueError, match=r"^params"):
        queries.write_statement("local", "DELETE FROM queries_t", "x").as_json()


def test_a_write_whose_connection_is_lost_raises_write_outcome_unknown(
    pg_cluster: LocalPostgresCluster,
) -> None:
    outcome: dict[str, BaseException] = {}

    def slow_insert() -> None:
        try:
            queries.write_statement(
                "local", "INSERT INTO queries_t SELECT 40, 'slow' FROM pg_sleep(3)"
            ).as_json()
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=slow_insert)
    worker.start()
    terminate_backend_running(pg_cluster, "INSERT INTO queries_t%pg_sleep%")
    worker.join(10)
    assert isinstance(outcome.get("error"), routing.WriteOutcomeUnknown), repr(outcome)
    assert 40 not in notes(pg_cluster)  # not applied, and above all not retried


# write_transaction


def test_write_transaction_commits_all_statements_together(
    pg_cluster: LocalPostgresCluster,
) -> None:
    result = queries.write_transaction(
        "local",
        [
            {"sql": "INSERT INTO queries_t VALUES (%s, %s) RETURNING id", "params": [50, "a"]},
            {"sql": "UPDATE queries_t SET note = %(note)s WHERE id <= 2", "params": {"note": "b"}},
            {"sql": "DELETE FROM queries_t WHERE id = 5"},
        ],
    ).as_json()
    assert result["committed"] is True
    assert result["statements"] == [
        {"rows_affected": 1, "status": "INSERT 0 1", "rows": [{"id": 50}], "truncated": False},
        {"rows_affected": 2, "status": "UPDATE 2", "rows": [], "truncated": False},
        {"rows_affected": 1, "status": "DELETE 1", "rows": [], "truncated": False},
    ]
    assert result["endpoint"] == "primary"
    assert "/" in result["lsn"]
    assert notes(pg_cluster) == {1: "b", 2: "b", 3: "row 3", 4: "row 4", 50: "a"}


def test_a_failing_statement_rolls_the_whole_transaction_back(
    pg_cluster: LocalPostgresCluster,
) -> None:
    with pytest.raises(routing.QueryError) as caught:
        queries.write_transaction(
            "local",
            [
                {"sql": "INSERT INTO queries_t VALUES (60, 'first')"},
                {"sql": "INSERT INTO queries_t VALUES (1, 'duplicate')"},
                {"sql": "INSERT INTO queries_t VALUES (61, 'third')"},
            ],
        ).as_json()
    message = str(caught.value)
    assert message.startswith("statement 2: ")
    assert "nothing was committed" in message
    assert caught.value.sqlstate == "23505"
    assert caught.value.statement_index == 1
    assert notes(pg_cluster) == ORIGINAL


def test_a_transaction_that_times_out_commits_nothing(pg_cluster: LocalPostgresCluster) -> None:
    with pytest.raises(routing.QueryError) as caught:
        queries.write_transaction(
            "local",
            [
                {"sql": "DELETE FROM queries_t"},
                {"sql": "SELECT pg_sleep(3)"},
            ],
            timeout_ms=300,
        ).as_json()
    assert caught.value.sqlstate == "57014"
    assert "statement 2" in str(caught.value)
    assert "nothing was committed" in str(caught.value)
    assert notes(pg_cluster) == ORIGINAL


@pytest.mark.parametrize(
    ("statements", "error", "message"),
    [
        ([], ValueError, "at least one statement"),
        ([{"sql": "SELECT 1"}] * 101, ValueError, "at most 100"),
        ("DELETE FROM queries_t", ValueError, "statements must be a list"),
        ([{"sql": "SELECT 1"}, "DELETE FROM queries_t"], ValueError, r"^statements\[1\] must"),
        ([{"sql": "SELECT 1", "parms": [1]}], ValueError, r"^statements\[0\]: unknown key parms"),
        ([{"sql": "SELECT 1"}, {"sql": ""}], ValueError, r"^statements\[1\]\.sql is empty"),
        ([{"sql": "SELECT 1"}, {"sql": 5}], ValueError, r"^statements\[1\]\.sql must be a string"),
        (
            [{"sql": "SELECT %s", "params": "x"}],
            ValueError,
            r"^statements\[0\]\.params must be a list",
        ),
        (
            [{"sql": "DELETE FROM queries_t"}, {"sql": "SELECT 1"}, {"sql": "COMMIT"}],
            Refused,
            r"^statements\[2\]\.sql: refused: transaction control is not allowed",
        ),
        (
            [{"sql": "DELETE FROM queries_t; DELETE FROM queries_t"}],
            Refused,
            r"^statements\[0\]\.sql: refused: only one statement",
        ),
    ],
)
def test_write_transaction_checks_every_statement_before_running_any(
    pg_cluster: LocalPostgresCluster, statements: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        queries.write_transaction("local", statements).as_json()
    assert notes(pg_cluster) == ORIGINAL


# explain


def test_explain_plans_without_running() -> None:
    result = queries.explain("local", "SELECT * FROM queries_t WHERE id = %s", [1]).as_json()
    assert isinstance(result["plan"], list)
    assert "Plan" in result["plan"][0]
    assert "Actual Rows" not in result["plan"][0]["Plan"]
    assert (result["analyzed"], result["rolled_back"]) == (False, False)
    assert result["endpoint"] in NODES


def test_explain_of_a_write_without_analyze_only_plans_it_even_on_a_replica(
    pg_cluster: LocalPostgresCluster,
) -> None:
    result = queries.explain(
        "local", "DELETE FROM queries_t", read_preference="secondary", allow_writes=True
    ).as_json()
    assert result["role"] == "replica"
    assert result["plan"][0]["Plan"]["Node Type"] == "ModifyTable"
    assert notes(pg_cluster) == ORIGINAL


def test_explain_of_a_write_as_the_read_role_says_why_it_cannot_be_planned() -> None:
    # PostgreSQL plans a DELETE only for a role that may run it; the assistant role reads.
    with pytest.raises(QueryError, match="42501") as raised:
        queries.explain("local", "DELETE FROM queries_t").as_json()
    assert raised.value.hint is not None
    assert "--allow-writes" in raised.value.hint


def test_explain_analyze_of_a_read_runs_it() -> None:
    result = queries.explain("local", "SELECT * FROM queries_t", analyze=True).as_json()
    plan = result["plan"][0]
    assert plan["Plan"]["Actual Rows"] == 5
    assert "Execution Time" in plan
    assert result["analyzed"] is True


def test_explain_analyze_of_a_write_needs_allow_writes_and_is_rolled_back(
    pg_cluster: LocalPostgresCluster,
) -> None:
    with pytest.raises(Refused, match="pass allow_writes"):
        queries.explain("local", "DELETE FROM queries_t", analyze=True).as_json()
    result = queries.explain(
        "local", "DELETE FROM queries_t WHERE id > %s", [2], analyze=True, allow_writes=True
    ).as_json()
    assert result["plan"][0]["Plan"]["Node Type"] == "ModifyTable"
    assert result["plan"][0]["Plan"]["Plans"][0]["Actual Rows"] == 3
    assert (result["analyzed"], result["rolled_back"]) == (True, True)
    assert (result["endpoint"], result["role"]) == ("primary", "primary")
    assert notes(pg_cluster) == ORIGINAL
    # The connection went back to the pool clean: the next write commits normally.
    queries.write_statement("local", "DELETE FROM queries_t WHERE id = 5").as_json()
    assert 5 not in notes(pg_cluster)


def test_explain_analyze_of_a_write_is_bounded_by_its_timeout(
    pg_cluster: LocalPostgresCluster,
) -> None:
    started = time.monotonic()
    with pytest.raises(routing.QueryError) as caught:
        queries.explain(
            "local",
            "DELETE FROM queries_t WHERE id IN (SELECT 1 FROM pg_sleep(3))",
            analyze=True,
            allow_writes=True,
            timeout_ms=300,
        ).as_json()
    assert caught.value.sqlstate == "57014"
    assert caught.value.endpoint == "primary"
    assert time.monotonic() - started < 1.5
    assert notes(pg_cluster) == ORIGINAL


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("EXPLAIN SELECT 1", "already an EXPLAIN"),
        ("SELECT 1; SELECT 2", "only one statement"),
        ("VACUUM queries_t", "EXPLAIN takes only"),
        ("SELECT pg_read_file('/etc/hostname')", "pg_read_file()"),
    ],
)
def test_explain_refuses_what_it_cannot_wrap(sql: str, reason: str) -> None:
    with pytest.raises(Refused, match=re.escape(reason)):
        queries.explain("local", sql, analyze=True, allow_writes=True).as_json()
