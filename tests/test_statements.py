"""The write path against the real local cluster: one statement per write, its WAL position on ask.

A routed write runs its statement alone; :attr:`QueryResult.lsn` reads the primary's WAL
position when first asked, after the commit, so it is at or past the commit record.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import pq

from endpoints import routing
from endpoints.devstack.localcluster import LocalPostgresCluster
from endpoints.models import Cluster
from endpoints.routing.statements import StatementPlan, run_statement

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_router")]

INSERT = "INSERT INTO statements_t (note) VALUES (%s) RETURNING pg_current_xact_id()::text AS xid"


@pytest.fixture
def table(local_cluster: Cluster, pg_cluster: LocalPostgresCluster) -> Cluster:
    with psycopg.connect(**pg_cluster.conninfo("primary"), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS statements_t")
        conn.execute("CREATE TABLE statements_t (id serial PRIMARY KEY, note text UNIQUE)")
    pg_cluster.wait_for_replay()
    return local_cluster


def _primary(pg_cluster: LocalPostgresCluster) -> psycopg.Connection:
    return psycopg.connect(**pg_cluster.conninfo("primary"), autocommit=True)


def test_a_writes_position_is_at_or_past_its_commit_record(
    table: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    with _primary(pg_cluster) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        try:
            before = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
            assert before is not None
            result = routing.execute("local", INSERT, ["a"])
            assert result.lsn is not None
            row = conn.execute(
                "SELECT end_lsn FROM pg_get_wal_records_info(%s::pg_lsn, %s::pg_lsn) "
                "WHERE resource_manager = 'Transaction' AND record_type = 'COMMIT' "
                "AND xid::text = %s",
                [before[0], result.lsn, result.rows[0]["xid"]],
            ).fetchone()
        finally:
            conn.execute("DROP EXTENSION pg_walinspect")
    # The commit record lies before the position: a replica that replayed it sees the row.
    assert row is not None, (before[0], result.lsn)
    pg_cluster.wait_for_replay()
    read = routing.execute(
        "local",
        "SELECT count(*) AS n FROM statements_t",
        min_lsn=result.lsn,
        read_preference="secondary",
    )
    assert read.rows == [{"n": 1}]


def test_a_write_reads_no_position_until_asked(table: Cluster) -> None:
    result = routing.execute("local", INSERT, ["b"])
    # Every pool closed: had the position been read with the write, it would be here.
    routing.reset_router()
    assert result.lsn is None
    assert result.status == "INSERT 0 1"


def test_a_position_is_read_once_and_kept(table: Cluster) -> None:
    result = routing.execute("local", INSERT, ["c"])
    first = result.lsn
    routing.execute("local", INSERT, ["d"])
    assert result.lsn == first


def test_reads_and_clusters_without_replicas_have_no_position(table: Cluster) -> None:
    assert routing.execute("local", "SELECT 1").lsn is None
    assert routing.execute("local", "SELECT 1", intent="read", read_only=True).lsn is None


def test_a_failing_write_raises_its_own_error_and_leaves_the_pool_clean(
    table: Cluster,
) -> None:
    routing.execute("local", INSERT, ["dup"])
    for _ in range(7):  # past psycopg's prepare threshold (5)
        with pytest.raises(routing.QueryError) as raised:
            routing.execute("local", INSERT, ["dup"])
        assert raised.value.sqlstate == "23505"
    primary = routing.stats("local").endpoints["primary"]
    assert primary.pool is not None
    assert primary.pool.in_use == 0
    assert primary.errors == 0  # SQL errors are answers, not endpoint failures
    assert routing.execute("local", INSERT, ["after"]).lsn is not None


def test_a_transactions_results_share_one_position(table: Cluster) -> None:
    results = routing.transaction(
        "local",
        [(INSERT, ["t1"]), (INSERT, ["t2"])],
    )
    assert results[0].lsn is not None
    assert results[1].lsn == results[0].lsn


def test_run_statement_in_a_transaction_commits_writes_and_ends_idle(
    table: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    with _primary(pg_cluster) as conn:
        plan = StatementPlan(read=False, timeout_ms=5_000)
        result = run_statement(conn, INSERT, ["in-tx"], plan)
        assert result.rowcount == 1
        assert conn.info.transaction_status == pq.TransactionStatus.IDLE
        with pytest.raises(psycopg.errors.UniqueViolation):
            run_statement(conn, INSERT, ["in-tx"], plan)
        assert conn.info.transaction_status == pq.TransactionStatus.IDLE
        row = conn.execute("SELECT count(*) FROM statements_t WHERE note = 'in-tx'").fetchone()
        assert row == (1,)
