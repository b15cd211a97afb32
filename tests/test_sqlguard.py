"""endpoints.sqlguard: what an assistant's SQL may do, and proof on the real cluster."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from endpoints import queries, routing, sqlguard
from endpoints.localcluster import LocalPostgresCluster
from endpoints.models import Cluster
from endpoints.sqlguard import Refused

# Attempts to write or to escape a read, each with a substring of the reason it is refused.
# They name the objects that the database test creates, so each is tried for real there too.
REFUSED_READS: list[tuple[str, str]] = [
    # Stacked statements, however disguised.
    ("SELECT 1; DELETE FROM guard_t", "only one statement at a time (found 2)"),
    ("COMMIT; DROP TABLE guard_t", "only one statement at a time (found 2)"),
    ("ROLLBACK; DELETE FROM guard_t", "only one statement at a time (found 2)"),
    ("END; DELETE FROM guard_t", "only one statement at a time (found 2)"),
    ("SELECT 1; SET TRANSACTION READ WRITE; DELETE FROM guard_t", "(found 3)"),
    ("SELECT 1 /* ; */ ; DELETE FROM guard_t", "only one statement at a time (found 2)"),
    ("SELECT $$;$$; DELETE FROM guard_t", "only one statement at a time (found 2)"),
    ("SELECT pg_sleep(0); DELETE FROM guard_t", "only one statement at a time (found 2)"),
    ("-- comment\nDELETE FROM guard_t", "DELETE modifies data; query only reads"),
    ("/* SELECT */ UPDATE guard_t SET note = 'x'", "UPDATE modifies data"),
    # Transaction control and session state.
    ("BEGIN", "BEGIN is transaction control"),
    ("START TRANSACTION READ WRITE", "START TRANSACTION is transaction control"),
    ("COMMIT", "COMMIT is transaction control"),
    ("SET TRANSACTION READ WRITE", "SET TRANSACTION changes session state"),
    ("SET default_transaction_read_only = off", "SET changes session state"),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", "changes session state"),
    ("RESET ALL", "RESET changes session state"),
    (
        "SELECT set_config('default_transaction_read_only', 'off', false)",
        "set_config() changes settings",
    ),
    ("PREPARE guard_q AS DELETE FROM guard_t", "PREPARE uses session state"),
    ("EXECUTE guard_q", "EXECUTE uses session state"),
    ("DECLARE guard_c CURSOR FOR SELECT 1", "DECLARE uses session state"),
    ("DISCARD ALL", "DISCARD uses session state"),
    ("LISTEN guard_channel", "LISTEN works only on the primary"),
    ("NOTIFY guard_channel", "NOTIFY works only on the primary"),
    ("SELECT pg_notify('guard_channel', 'x')", "calls pg_notify()"),
    # Data-modifying statements, also hidden in CTEs and EXPLAIN ANALYZE.
    ("WITH d AS (DELETE FROM guard_t RETURNING *) SELECT * FROM d", "DELETE in a WITH clause"),
    (
        "WITH a AS (SELECT * FROM (WITH u AS (UPDATE guard_t SET note = 'x' RETURNING *) "
        "SELECT * FROM u) s) SELECT count(*) FROM a",
        "UPDATE in a WITH clause",
    ),
    ("WITH i AS (INSERT INTO guard_t VALUES (99, 'x')) SELECT 1", "INSERT in a WITH clause"),
    ("SELECT * INTO guard_new FROM guard_t", "SELECT INTO creates a table"),
    ("CREATE TABLE guard_new AS SELECT * FROM guard_t", "CREATE TABLE AS creates a relation"),
    ("CREATE TEMP TABLE guard_tmp (id int)", "CREATE TABLE is DDL"),
    ("DO $$ BEGIN DELETE FROM guard_t; END $$", "DO runs procedural code"),
    ("CALL guard_p()", "CALL runs a procedure"),
    ("EXPLAIN ANALYZE DELETE FROM guard_t", "EXPLAIN ANALYZE runs the statement, and DELETE"),
    ("EXPLAIN (ANALYZE true, FORMAT JSON) UPDATE guard_t SET note = 'x'", "UPDATE modifies"),
    (
        "INSERT INTO guard_t (id, note) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET note = 'y'",
        "INSERT modifies data",
    ),
    (
        "MERGE INTO guard_t t USING (VALUES (1)) v(id) ON t.id = v.id WHEN MATCHED THEN DELETE",
        "MERGE modifies data",
    ),
    ("UPDATE guard_t SET note = 'x'", "UPDATE modifies data"),
    ("DELETE FROM guard_t", "DELETE modifies data"),
    ("TRUNCATE guard_t", "TRUNCATE modifies data"),
    ("DROP TABLE guard_t", "DROP TABLE is DDL"),
    ("GRANT SELECT ON guard_t TO PUBLIC", "GRANT is DDL"),
    ("ALTER SYSTEM SET work_mem = '1GB'", "ALTER SYSTEM is DDL"),
    ("VACUUM guard_t", "VACUUM is maintenance"),
    ("ANALYZE guard_t", "ANALYZE is maintenance"),
    # COPY of any kind.
    ("COPY guard_t TO STDOUT", "COPY is not supported through query; use SELECT"),
    ("COPY guard_t FROM PROGRAM 'id'", "COPY is not supported through query"),
    ("COPY (SELECT 1) TO PROGRAM 'sh'", "COPY is not supported through query"),
    ("COPY guard_t TO '/tmp/guard_out'", "COPY is not supported through query"),
    # Locks, sequences, transaction ids.
    ("SELECT * FROM guard_t FOR UPDATE", "FOR UPDATE takes row locks"),
    ("SELECT * FROM guard_t WHERE id IN (SELECT id FROM guard_t FOR SHARE)", "FOR SHARE"),
    ("LOCK TABLE guard_t", "LOCK takes table locks"),
    ("SELECT pg_advisory_lock(1)", "calls pg_advisory_lock()"),
    ("SELECT pg_try_advisory_xact_lock(1)", "calls pg_try_advisory_xact_lock()"),
    ("SELECT nextval('guard_s')", "calls nextval()"),
    ("SELECT setval('guard_s', 100)", "calls setval()"),
    ("SELECT txid_current()", "calls txid_current()"),
    # Server files, in every clause, however the name is spelled.
    ("SELECT * FROM pg_read_file('/etc/passwd')", "pg_read_file() reads files"),
    ("SELECT pg_read_file('/etc/passwd')", "pg_read_file() reads files"),
    ("SELECT 1 FROM guard_t WHERE pg_read_file('/etc/passwd') <> ''", "pg_read_file()"),
    ("SELECT (SELECT pg_read_file('/etc/passwd'))", "pg_read_file()"),
    ("WITH f AS (SELECT pg_read_file('/etc/passwd') AS c) SELECT c FROM f", "pg_read_file()"),
    (
        "SELECT f.c FROM guard_t, LATERAL (SELECT pg_read_file('/etc/passwd') AS c) f",
        "pg_read_file()",
    ),
    ("SELECT * FROM guard_t, LATERAL pg_read_file('/etc/passwd') f", "pg_read_file()"),
    ("SELECT * FROM ROWS FROM (pg_read_file('/etc/passwd'))", "pg_read_file()"),
    ("SELECT 1 ORDER BY pg_read_file('/etc/passwd')", "pg_read_file()"),
    ("EXPLAIN SELECT pg_read_file('/etc/passwd')", "pg_read_file()"),
    ("EXPLAIN ANALYZE SELECT pg_read_file('/etc/passwd')", "pg_read_file()"),
    ("SELECT pg_catalog.pg_read_file('/etc/passwd')", "pg_read_file() reads files"),
    ("SELECT \"pg_read_file\"('/etc/passwd')", "pg_read_file() reads files"),
    ("SELECT PG_READ_FILE('/etc/passwd')", "pg_read_file() reads files"),
    ("SELECT pg_read_binary_file('/etc/passwd')", "pg_read_binary_file() reads files"),
    ("SELECT * FROM pg_ls_dir('.')", "pg_ls_dir() lists directories"),
    ("SELECT * FROM pg_ls_waldir()", "pg_ls_waldir() lists directories"),
    ("SELECT pg_stat_file('postgresql.conf')", "pg_stat_file() reads file metadata"),
    ("SELECT lo_import('/etc/passwd')", "lo_import() reads a file"),
    ("SELECT lo_export(1, '/tmp/guard_lo')", "lo_export() writes a large object to a file"),
    ("SELECT lo_unlink(1)", "lo_unlink() uses large objects"),
    # Calls hidden in attribute notation: x.f means f(x), without a function call in the SQL.
    (
        "SELECT x.pg_read_file FROM CAST('/etc/passwd' AS text) x",
        ".pg_read_file calls pg_read_file() in attribute notation",
    ),
    (
        "SELECT (x).pg_read_file FROM (SELECT '/etc/passwd'::text AS x) s",
        "pg_read_file() in attribute notation",
    ),
    ("SELECT (CAST('/etc/passwd' AS text)).pg_read_file", "pg_read_file() in attribute notation"),
    ("SELECT x.pg_terminate_backend FROM CAST(1 AS int) x", "which ends another session"),
    ("SELECT x.pg_advisory_lock FROM CAST(1 AS bigint) x", "writes or needs the primary"),
    ("SELECT s.nextval FROM CAST('guard_s' AS regclass) s", ".nextval calls nextval()"),
    # SQL in a string, other servers, server control.
    (
        "SELECT query_to_xml('select pg_read_file(''/etc/passwd'')', true, false, '')",
        "query_to_xml() runs SQL passed as a string",
    ),
    (
        "SELECT * FROM dblink('host=x', 'select 1') AS t(a int)",
        "dblink() connects to another server",
    ),
    ("SELECT dblink_exec('host=x', 'DELETE FROM guard_t')", "dblink_exec() connects"),
    ("SELECT pg_terminate_backend(1)", "pg_terminate_backend() ends another session"),
    ("SELECT pg_cancel_backend(1)", "pg_cancel_backend() cancels"),
    ("SELECT pg_reload_conf()", "pg_reload_conf() reloads the server configuration"),
    ("SELECT pg_rotate_logfile()", "pg_rotate_logfile() rotates the server log"),
    ("SELECT pg_promote()", "pg_promote() promotes a standby server"),
    # Nothing, or not SQL.
    ("/* nothing */", "the SQL is empty"),
    ("SELEC 1", "the SQL does not parse: syntax error"),
    ("SELECT 1\x00; DELETE FROM guard_t", "does not parse: SQL contains a NUL character"),
]

# Reads that pass: (sql, params).
ALLOWED_READS: list[tuple[str, Any]] = [
    ("SELECT id, note FROM guard_t WHERE id = %s", [1]),
    ("SELECT %(n)s::int AS n, note FROM guard_t WHERE note LIKE 'row%%' LIMIT 1", {"n": 5}),
    ("WITH r AS (SELECT id FROM guard_t) SELECT count(*) AS n FROM r", None),
    ("EXPLAIN SELECT * FROM guard_t", None),
    ("EXPLAIN DELETE FROM guard_t", None),  # planned, not run
    ("EXPLAIN ANALYZE SELECT count(*) FROM guard_t", None),
    ("SELECT pg_sleep(0)", None),
    ("SHOW work_mem", None),
    ("VALUES (1), (2)", None),
    ("TABLE guard_t", None),
    ("SELECT 'pg_read_file(''/etc/passwd'')' AS call, 'DELETE FROM guard_t' AS stmt", None),
    ("SELECT $$; DELETE FROM guard_t$$ AS text", None),
    ("SELECT 1 AS one -- ; DELETE FROM guard_t", None),
    ("SELECT now(), current_setting('work_mem') AS work_mem", None),
    # A column that merely looks like a large-object function, after a dot.
    ("SELECT r.lo_bound FROM (SELECT 1 AS lo_bound) r", None),
    ("SELECT id FROM guard_t; ", None),
]


@pytest.mark.parametrize(("sql", "reason"), REFUSED_READS, ids=[s for s, _ in REFUSED_READS])
def test_check_read_refuses_writes_and_escapes_with_the_reason(sql: str, reason: str) -> None:
    with pytest.raises(Refused) as caught:
        sqlguard.check_read(sql)
    message = str(caught.value)
    assert message.startswith("refused: ")
    assert reason in message
    assert "\n" not in message


def test_the_corpus_is_large_enough() -> None:
    assert len(REFUSED_READS) >= 45
    assert len({sql for sql, _ in REFUSED_READS}) == len(REFUSED_READS)


@pytest.mark.parametrize(("sql", "params"), ALLOWED_READS, ids=[s for s, _ in ALLOWED_READS])
def test_check_read_lets_reads_through(sql: str, params: Any) -> None:
    classification = sqlguard.check_read(sql, has_params=params is not None)
    assert classification.is_read
    assert classification.statement_count == 1


def test_refusal_messages_read_as_one_sentence() -> None:
    cases = {
        "SELECT pg_read_file('/etc/passwd')": (
            "refused: pg_read_file() reads files on the database server"
        ),
        "SELECT 1; SELECT 2": "refused: only one statement at a time (found 2)",
        "INSERT INTO t VALUES (1)": (
            "refused: INSERT modifies data; query only reads (use execute, which needs "
            "--allow-writes)"
        ),
        "COPY t TO STDOUT": "refused: COPY is not supported through query; use SELECT",
    }
    for sql, message in cases.items():
        with pytest.raises(Refused) as caught:
            sqlguard.check_read(sql)
        assert str(caught.value) == message


def test_placeholders_are_read_as_parameters_only_when_params_are_given() -> None:
    assert sqlguard.check_read("SELECT %s::int", has_params=True).is_read
    with pytest.raises(Refused, match=r"found 2"):
        sqlguard.check_read("SELECT %s; DELETE FROM t", has_params=True)
    # %% is a literal percent sign for psycopg only when there are parameters.
    assert sqlguard.check_read("SELECT 'a' LIKE '%%'", has_params=True).is_read


def test_long_and_deeply_nested_sql() -> None:
    with pytest.raises(Refused, match="too long to classify"):
        sqlguard.check_read("SELECT 1" + " " * 300_000)
    # Parsed on a thread with a large stack, and walked without recursion.
    nested = "SELECT " + "(" * 5000 + "1" + ")" * 5000
    assert sqlguard.check_read(nested).is_read
    with pytest.raises(Refused, match="attribute notation"):
        sqlguard.check_read(nested.replace("1", "(x).pg_read_file"))


def test_refused_function_names_match_any_case_schema_and_family() -> None:
    for name in ("pg_read_file", "PG_READ_FILE", "pg_catalog.pg_read_file", "pg_ls_newdir"):
        assert sqlguard.refused_function_reason(name) is not None, name
    for name in ("lo_anything", "dblink_whatever", "pg_file_write", "set_config"):
        assert sqlguard.refused_function_reason(name) is not None, name
    for name in ("pg_sleep", "now", "lower", "pg_read_files_later", "count"):
        assert sqlguard.refused_function_reason(name) is None, name
    assert {"pg_read_file", "pg_ls_dir", "lo_import", "dblink", "pg_promote"} <= (
        sqlguard.REFUSED_FUNCTIONS
    )


# check_write


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("BEGIN", "transaction control is not allowed; use transaction"),
        ("COMMIT", "transaction control is not allowed; use transaction"),
        ("ROLLBACK", "transaction control is not allowed"),
        ("SAVEPOINT s", "transaction control is not allowed"),
        ("PREPARE TRANSACTION 'x'", "transaction control is not allowed"),
        ("COMMIT PREPARED 'x'", "transaction control is not allowed"),
        ("INSERT INTO t VALUES (1); COMMIT", "only one statement at a time (found 2)"),
        ("BEGIN; INSERT INTO t VALUES (1)", "only one statement at a time (found 2)"),
        ("SET search_path = evil", "SET changes session state, which would outlive"),
        ("SET SESSION AUTHORIZATION nobody", "changes session state"),
        ("RESET ALL", "RESET changes session state"),
        ("LISTEN c", "LISTEN works only on the primary, which would outlive"),
        ("PREPARE q AS SELECT 1", "PREPARE uses session state"),
        ("COPY t FROM STDIN", "COPY is not supported"),
        ("COPY t TO '/tmp/x'", "COPY is not supported"),
        ("INSERT INTO t SELECT pg_read_file('/etc/passwd')", "pg_read_file() reads files"),
        ("SELECT lo_import('/etc/passwd')", "lo_import() reads a file"),
        ("SELECT dblink_exec('host=x', 'DROP TABLE t')", "dblink_exec() connects"),
        ("SELECT pg_terminate_backend(1)", "ends another session"),
        ("SELECT set_config('search_path', 'evil', false)", "set_config() changes settings"),
        ("UPDATE t SET note = x.pg_read_file FROM CAST('/x' AS text) x", "attribute notation"),
        ("", "the SQL is empty"),
    ],
)
def test_check_write_refuses_transaction_control_session_state_copy_and_files(
    sql: str, reason: str
) -> None:
    with pytest.raises(Refused) as caught:
        sqlguard.check_write(sql)
    assert reason in str(caught.value)


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO t (note) VALUES (%s) RETURNING id",
        "UPDATE t SET note = 'x' WHERE id = 1",
        "DELETE FROM t",
        "WITH d AS (DELETE FROM t RETURNING *) INSERT INTO u SELECT * FROM d",
        "CREATE TABLE u (id int)",
        "SELECT nextval('s')",
        "DO $$ BEGIN NULL; END $$",
        "CALL p()",
        "SELECT 1",
    ],
)
def test_check_write_lets_single_statements_through(sql: str) -> None:
    assert sqlguard.check_write(sql, has_params="%s" in sql).statement_count == 1


def test_check_explain_decides_how_explain_may_run() -> None:
    assert sqlguard.check_explain("SELECT 1") == "read"
    assert sqlguard.check_explain("DELETE FROM t") == "read"  # only planned
    assert sqlguard.check_explain("SELECT 1", analyze=True) == "read"
    with pytest.raises(Refused, match="EXPLAIN ANALYZE runs the statement, and DELETE"):
        sqlguard.check_explain("DELETE FROM t", analyze=True)
    assert sqlguard.check_explain("DELETE FROM t", analyze=True, allow_writes=True) == "write"
    assert (
        sqlguard.check_explain(
            "SELECT s.nextval FROM CAST('s' AS regclass) s", analyze=True, allow_writes=True
        )
        == "write"
    )
    refusals = {
        "EXPLAIN SELECT 1": "already an EXPLAIN",
        "SELECT 1; SELECT 2": "only one statement",
        "BEGIN": "EXPLAIN takes only",
        "COPY t TO STDOUT": "EXPLAIN takes only",
        "EXECUTE q": "EXPLAIN takes only",
        "SELECT pg_read_file('/etc/passwd')": "pg_read_file()",
    }
    for sql, reason in refusals.items():
        with pytest.raises(Refused, match=re.escape(reason)):
            sqlguard.check_explain(sql, analyze=True, allow_writes=True)


# Against the real cluster


@pytest.fixture
def guarded(
    redis_server: Any, local_cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> Iterator[LocalPostgresCluster]:
    routing.reset_router()
    with psycopg.connect(**pg_cluster.conninfo("primary"), autocommit=True) as conn:
        conn.execute(
            "DROP VIEW IF EXISTS guard_v; DROP FUNCTION IF EXISTS guard_bump();"
            "DROP PROCEDURE IF EXISTS guard_p();"
            "DROP TABLE IF EXISTS guard_t, guard_new; DROP SEQUENCE IF EXISTS guard_s;"
            "CREATE TABLE guard_t (id int PRIMARY KEY, note text);"
            "INSERT INTO guard_t SELECT g, 'row ' || g FROM generate_series(1, 20) g;"
            "CREATE SEQUENCE guard_s; SELECT nextval('guard_s');"
            "CREATE PROCEDURE guard_p() LANGUAGE sql AS $$ DELETE FROM guard_t $$;"
            # A view whose function writes: the SQL text shows no write at all.
            "CREATE FUNCTION guard_bump() RETURNS int LANGUAGE plpgsql AS "
            "$$ BEGIN UPDATE guard_t SET note = 'bumped'; RETURN 1; END $$;"
            "CREATE VIEW guard_v AS SELECT guard_bump() AS bumped;"
        )
    pg_cluster.wait_for_replay()
    yield pg_cluster
    routing.reset_router()


def fingerprint(pg_cluster: LocalPostgresCluster) -> tuple[Any, ...]:
    """The test table's contents, the sequence, the schema's relations and large objects."""
    with psycopg.connect(**pg_cluster.conninfo("primary")) as conn:
        row = conn.execute(
            "SELECT (SELECT md5(string_agg(g::text, ',' ORDER BY id)) FROM guard_t g),"
            " (SELECT last_value FROM guard_s),"
            " (SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class"
            "   WHERE relnamespace = 'public'::regnamespace),"
            " (SELECT count(*) FROM pg_largeobject_metadata),"
            " (SELECT count(*) FROM pg_prepared_xacts)"
        ).fetchone()
    assert row is not None
    return tuple(row)


@pytest.mark.django_db(transaction=True)
def test_every_refused_read_is_refused_by_read_query_and_changes_nothing(
    guarded: LocalPostgresCluster,
) -> None:
    before = fingerprint(guarded)
    assert before[0] is not None
    for read_preference in ("primary", "secondary"):
        for sql, reason in REFUSED_READS:
            with pytest.raises(Refused) as caught:
                queries.read_query("local", sql, read_preference=read_preference)
            assert reason in str(caught.value), sql
    assert fingerprint(guarded) == before
    # The fingerprint does notice a change.
    queries.write_statement("local", "UPDATE guard_t SET note = 'changed' WHERE id = 1")
    assert fingerprint(guarded) != before
    # The pooled connections were never touched, so they are still read-write and usable.
    result = queries.read_query("local", "SHOW default_transaction_read_only")
    assert result["rows"] == [{"default_transaction_read_only": "off"}]


@pytest.mark.django_db(transaction=True)
def test_allowed_reads_run_through_read_query(guarded: LocalPostgresCluster) -> None:
    before = fingerprint(guarded)
    for sql, params in ALLOWED_READS:
        result = queries.read_query("local", sql, params)
        assert result["row_count"] >= 1, sql
    assert fingerprint(guarded) == before


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("read_preference", ["primary", "secondary"])
@pytest.mark.parametrize("sql", ["SELECT * FROM guard_v", "SELECT guard_bump()"])
def test_a_write_the_sql_does_not_show_is_refused_by_the_server(
    guarded: LocalPostgresCluster, read_preference: str, sql: str
) -> None:
    before = fingerprint(guarded)
    assert sqlguard.check_read(sql).is_read  # the guard cannot see into the function
    with pytest.raises(routing.QueryError) as caught:
        queries.read_query("local", sql, read_preference=read_preference)
    assert caught.value.sqlstate == "25006"
    assert "read-only transaction" in str(caught.value)
    assert fingerprint(guarded) == before
