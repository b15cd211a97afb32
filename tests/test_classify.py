"""endpoints.core.classify: which SQL may run on a hot-standby replica, checked against a real one.

The table below is the specification. Every read in it that names only objects of the
``classify_t`` schema is run on a real streaming replica (it must succeed), and every write
marked "rejected" is run there too (the standby must refuse it), so the table cannot drift
from what PostgreSQL actually does.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, NamedTuple

import psycopg
import pytest

from endpoints.core.classify import (
    CACHED_MAX_CHARS,
    MAX_CLASSIFIED_CHARS,
    READ_ONLY_FUNCTIONS,
    WRITE_FUNCTIONS,
    Classification,
    classify,
    is_write_function,
    to_server_placeholders,
)
from endpoints.devstack.localcluster import LocalPostgresCluster

ROOT = Path(__file__).resolve().parent.parent

Kind = Literal["read", "write"]
# What the replica check does with a case: run it and expect success ("runs"), run it and
# expect the standby to refuse it ("rejected"), or leave it out ("skipped": it names objects
# that do not exist, needs session state, or its outcome on a standby is not the point).
ReplicaCheck = Literal["runs", "rejected", "skipped"]


class Case(NamedTuple):
    sql: str
    kind: Kind
    reason: str
    replica: ReplicaCheck


def reads(sql: str, reason: str = "", *, replica: ReplicaCheck = "runs") -> Case:
    return Case(sql, "read", reason, replica)


def writes(sql: str, reason: str = "", *, replica: ReplicaCheck = "skipped") -> Case:
    return Case(sql, "write", reason, replica)


# Statements run with search_path = classify_t, where SCHEMA_SQL creates t, u, v, s, my_func.
CASES: list[Case] = [
    # Plain reads.
    reads("SELECT 1", "SELECT only reads"),
    reads("SELECT * FROM t"),
    reads("select id, name from t where id = 1"),
    reads("SELECT t.id, u.note FROM t JOIN u ON u.t_id = t.id"),
    reads("SELECT * FROM t WHERE id IN (SELECT t_id FROM u)"),
    reads("SELECT (SELECT max(id) FROM u) AS m"),
    reads("SELECT EXISTS (SELECT 1 FROM u WHERE u.t_id = t.id) FROM t"),
    reads("SELECT * FROM t, LATERAL (SELECT * FROM u WHERE u.t_id = t.id LIMIT 1) AS x"),
    reads("SELECT id FROM t UNION SELECT id FROM u"),
    reads("SELECT id FROM t INTERSECT SELECT t_id FROM u"),
    reads("SELECT id FROM t EXCEPT ALL SELECT t_id FROM u"),
    reads("WITH x AS (SELECT * FROM t) SELECT * FROM x"),
    reads("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) TABLE r"),
    reads("WITH x AS MATERIALIZED (SELECT id FROM t) SELECT count(*) FROM x"),
    reads("VALUES (1, 'a'), (2, 'b')", "VALUES only reads"),
    reads("SELECT * FROM (VALUES (1), (2)) AS vals(x)"),
    reads("TABLE t"),
    reads("SELECT id, name FROM v"),
    reads("SHOW search_path", "SHOW only reads"),
    reads("SHOW ALL"),
    reads("SELECT count(*), sum(id), avg(grp) FROM t GROUP BY grp HAVING count(*) > 0"),
    reads("SELECT count(*) FILTER (WHERE id > 1) FROM t"),
    reads(
        "SELECT id, row_number() OVER (PARTITION BY grp ORDER BY id), rank() OVER w FROM t "
        "WINDOW w AS (ORDER BY id)"
    ),
    reads("SELECT lag(name) OVER (ORDER BY id), sum(id) OVER () FROM t"),
    reads("SELECT array_agg(id ORDER BY id), string_agg(name, ',') FROM t"),
    reads("SELECT DISTINCT ON (grp) grp, id FROM t ORDER BY grp, id"),
    reads("SELECT * FROM t ORDER BY lower(name) LIMIT 5 OFFSET 1"),
    reads("SELECT * FROM generate_series(1, 3) AS g"),
    reads("SELECT * FROM ROWS FROM (generate_series(1, 2), generate_series(1, 3)) AS g(a, b)"),
    reads("SELECT x FROM unnest(ARRAY[1, 2]) AS x"),
    reads("SELECT id FROM t WHERE id = ANY (ARRAY[1, 2])"),
    reads("SELECT * FROM t WHERE name LIKE 'a%' AND id BETWEEN 1 AND 10"),
    reads("SELECT * FROM t TABLESAMPLE SYSTEM (50)"),
    reads(
        "SELECT current_timestamp, current_user, coalesce(NULL, 1), greatest(1, 2), nullif(1, 2)"
    ),
    reads("SELECT CAST(id AS text), name::varchar(10) FROM t"),
    reads("SELECT CASE WHEN id > 1 THEN 'big' ELSE 'small' END FROM t"),
    reads("SELECT jsonb_build_object('id', id), format('%s!', name) FROM t"),
    reads("SELECT current_setting('search_path'), has_table_privilege('t', 'SELECT')"),
    reads("SELECT now(), clock_timestamp(), random(), pg_sleep(0)"),
    reads("SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()"),
    reads("SELECT txid_current_snapshot(), pg_current_snapshot()"),
    reads("SELECT my_func(1)", "SELECT only reads"),
    reads("SELECT * FROM t FOR READ ONLY"),
    reads('SELECT 1 AS "for update"'),
    # Strings and comments are not SQL.
    reads("SELECT 'please delete me' AS note"),
    reads("SELECT 'INSERT INTO t VALUES (1)'"),
    reads("SELECT 'nextval(''s'')' AS not_a_call"),
    reads("SELECT $$INSERT INTO t VALUES (1); DELETE FROM t$$"),
    reads("SELECT $body$ UPDATE t SET name = 'x' $body$ AS sql_text"),
    reads("SELECT 1 -- INSERT INTO t VALUES (1)"),
    reads("/* DELETE FROM t */ SELECT 1"),
    reads("SELECT /* UPDATE t SET id = 0; */ name FROM t"),
    reads("-- leading comment\nSELECT 1;\n-- trailing comment"),
    # Several statements: a read only if all of them are.
    reads("SELECT 1; SELECT 2", "all 2 statements only read"),
    reads("SELECT 1; TABLE t; SHOW work_mem"),
    # EXPLAIN without ANALYZE plans but does not execute; EXPLAIN ANALYZE of a read reads.
    reads("EXPLAIN SELECT * FROM t", "does not run it"),
    reads("EXPLAIN (FORMAT JSON, COSTS off) SELECT * FROM t"),
    reads("EXPLAIN VERBOSE SELECT * FROM t"),
    reads("EXPLAIN INSERT INTO t VALUES (100, 'x', 1)", "does not run it"),
    reads("EXPLAIN DELETE FROM t"),
    reads("EXPLAIN (ANALYZE false) DELETE FROM t", "does not run it"),
    reads("EXPLAIN (ANALYZE off, BUFFERS) UPDATE t SET name = 'x'"),
    reads("EXPLAIN (ANALYZE 0) DELETE FROM t"),
    reads("EXPLAIN SELECT * FROM t FOR UPDATE"),
    reads("EXPLAIN WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d"),
    reads("EXPLAIN ANALYZE SELECT * FROM t", "EXPLAIN ANALYZE runs a statement that only reads"),
    reads("EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM t JOIN u ON u.t_id = t.id"),
    reads("EXPLAIN ANALYSE VALUES (1)"),
    # COPY to the client.
    reads("COPY t TO STDOUT", "COPY TO STDOUT only reads"),
    reads("COPY t (id, name) TO STDOUT"),
    reads("COPY (SELECT * FROM t WHERE id > 1) TO STDOUT WITH (FORMAT csv)"),
    # Nothing to run.
    reads("", "no statement", replica="skipped"),
    reads("-- only a comment", "no statement", replica="skipped"),
    reads("/* INSERT INTO t VALUES (1) */ ;", "no statement", replica="skipped"),
    # Data-modifying statements.
    writes("INSERT INTO t VALUES (100, 'x', 1)", "INSERT modifies data", replica="rejected"),
    writes("insert into t (id) values (101) returning id", "INSERT modifies data"),
    writes("INSERT INTO t SELECT * FROM t ON CONFLICT DO NOTHING"),
    writes("WITH x AS (SELECT 1) INSERT INTO t SELECT 100, 'x', 1 FROM x", "INSERT"),
    writes("UPDATE t SET name = 'x' WHERE id = 1", "UPDATE modifies data", replica="rejected"),
    writes("DELETE FROM t WHERE id = 1", "DELETE modifies data", replica="rejected"),
    writes("DELETE FROM t USING u WHERE u.t_id = t.id"),
    writes(
        "MERGE INTO t USING u ON t.id = u.t_id WHEN MATCHED THEN UPDATE SET name = u.note",
        "MERGE modifies data",
        replica="rejected",
    ),
    writes("TRUNCATE t", "TRUNCATE modifies data", replica="rejected"),
    # Row locks, anywhere.
    writes("SELECT * FROM t FOR UPDATE", "FOR UPDATE takes row locks", replica="rejected"),
    writes("SELECT * FROM t FOR NO KEY UPDATE", "FOR NO KEY UPDATE", replica="rejected"),
    writes("SELECT * FROM t FOR SHARE", "FOR SHARE takes row locks", replica="rejected"),
    writes("SELECT * FROM t FOR KEY SHARE", "FOR KEY SHARE", replica="rejected"),
    writes("SELECT * FROM t FOR UPDATE SKIP LOCKED", "FOR UPDATE"),
    writes("SELECT * FROM t FOR UPDATE OF t NOWAIT", "FOR UPDATE"),
    writes("SELECT * FROM t\nFOR\n  no key   UPDATE", "FOR NO KEY UPDATE"),
    writes(
        "SELECT * FROM t WHERE id IN (SELECT t_id FROM u FOR UPDATE)",
        "FOR UPDATE",
        replica="rejected",
    ),
    writes("SELECT * FROM (SELECT * FROM t FOR SHARE) AS s", "FOR SHARE"),
    writes(
        "WITH locked AS (SELECT * FROM t FOR NO KEY UPDATE) SELECT * FROM locked",
        "FOR NO KEY UPDATE",
        replica="rejected",
    ),
    writes("SELECT (SELECT name FROM t LIMIT 1 FOR KEY SHARE)", "FOR KEY SHARE"),
    writes(
        "SELECT * FROM t, LATERAL (SELECT * FROM u WHERE u.t_id = t.id FOR UPDATE) AS x",
        "FOR UPDATE",
    ),
    writes("COPY (SELECT * FROM t FOR UPDATE) TO STDOUT", "FOR UPDATE"),
    # New tables from a query.
    writes("SELECT * INTO new_t FROM t", "SELECT INTO creates a table", replica="rejected"),
    writes("SELECT 1 AS a INTO TEMP tmp_t", "SELECT INTO"),
    writes("CREATE TABLE t2 AS SELECT * FROM t", "CREATE TABLE AS"),
    writes("CREATE MATERIALIZED VIEW mv AS SELECT 1", "CREATE MATERIALIZED VIEW"),
    # Data-modifying CTEs, even nested or unreferenced.
    writes(
        "WITH d AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT * FROM d",
        "DELETE in a WITH clause modifies data",
        replica="rejected",
    ),
    writes(
        "WITH i AS (INSERT INTO t VALUES (100, 'x', 1) RETURNING id) SELECT id FROM i",
        "INSERT in a WITH clause",
    ),
    writes("WITH up AS (UPDATE t SET name = 'y' RETURNING id) SELECT count(*) FROM up", "UPDATE"),
    writes(
        "WITH unused AS (DELETE FROM t) SELECT 1",
        "DELETE in a WITH clause",
        replica="rejected",
    ),
    writes(
        "WITH a AS (SELECT 1), b AS (WITH c AS (UPDATE t SET grp = 2 RETURNING id) "
        "SELECT * FROM c) SELECT * FROM a",
        "UPDATE in a WITH clause",
    ),
    writes(
        "SELECT * FROM (WITH d AS (DELETE FROM u RETURNING t_id) SELECT * FROM d) AS sub",
        "DELETE",
    ),
    writes(
        "WITH m AS (MERGE INTO t USING u ON t.id = u.t_id WHEN MATCHED THEN DELETE "
        "RETURNING t.id) SELECT 1",
        "MERGE in a WITH clause",
    ),
    writes("COPY (INSERT INTO t VALUES (1) RETURNING id) TO STDOUT", "INSERT"),
    # EXPLAIN ANALYZE runs the statement.
    writes("EXPLAIN ANALYZE DELETE FROM t", "EXPLAIN ANALYZE runs", replica="rejected"),
    writes("EXPLAIN (ANALYZE, BUFFERS) INSERT INTO t VALUES (100, 'x', 1)", "INSERT"),
    writes("EXPLAIN (ANALYZE true) UPDATE t SET name = 'x'", "UPDATE modifies data"),
    writes("EXPLAIN (ANALYZE 1, VERBOSE) DELETE FROM t", "DELETE"),
    writes("EXPLAIN (ANALYZE) SELECT * FROM t FOR UPDATE", "FOR UPDATE", replica="rejected"),
    writes("EXPLAIN ANALYZE WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", "DELETE"),
    writes("EXPLAIN ANALYZE SELECT 1 INTO t9", "SELECT INTO"),
    writes("EXPLAIN ANALYZE SELECT nextval('s')", "nextval", replica="rejected"),
    writes("EXPLAIN SELECT nextval('s')", "calls nextval()"),
    writes("EXPLAIN EXECUTE p", "prepared statement"),
    # DDL and maintenance.
    writes("CREATE TABLE x (a int)", "CREATE TABLE is DDL"),
    writes("CREATE TEMP TABLE tmp_x (a int)", "CREATE TABLE", replica="rejected"),
    writes("CREATE UNIQUE INDEX CONCURRENTLY i ON t (name)", "CREATE INDEX"),
    writes("ALTER TABLE t ADD COLUMN c int", "ALTER TABLE is DDL", replica="rejected"),
    writes("DROP TABLE IF EXISTS x", "DROP TABLE is DDL"),
    writes("DROP INDEX i", "DROP INDEX"),
    writes("COMMENT ON TABLE t IS 'select only'", "COMMENT"),
    writes("GRANT SELECT ON t TO PUBLIC", "GRANT"),
    writes("REVOKE ALL ON t FROM PUBLIC", "REVOKE"),
    writes("CREATE VIEW v2 AS SELECT 1", "CREATE VIEW"),
    writes("CREATE SEQUENCE s2", "CREATE SEQUENCE"),
    writes("ALTER SEQUENCE s RESTART", "ALTER SEQUENCE"),
    writes("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", "CREATE FUNCTION"),
    writes("CREATE SCHEMA x", "CREATE SCHEMA"),
    writes("CREATE EXTENSION IF NOT EXISTS pgcrypto", "CREATE EXTENSION"),
    writes("ALTER SYSTEM SET work_mem = '8MB'", "ALTER SYSTEM"),
    writes("CREATE ROLE r", "CREATE ROLE"),
    writes("REINDEX TABLE t", "REINDEX is maintenance"),
    writes("VACUUM t", "VACUUM is maintenance", replica="rejected"),
    writes("VACUUM (ANALYZE) t", "VACUUM"),
    writes("ANALYZE t", "ANALYZE is maintenance", replica="rejected"),
    writes("CLUSTER t USING t_pkey", "CLUSTER"),
    writes("REFRESH MATERIALIZED VIEW mv", "REFRESH MATERIALIZED VIEW"),
    writes("CHECKPOINT", "CHECKPOINT"),
    # Procedural code.
    writes("CALL p()", "CALL runs a procedure"),
    writes("DO $$ BEGIN RAISE NOTICE 'select only'; END $$", "DO runs procedural code"),
    writes("DO LANGUAGE plpgsql $$ BEGIN PERFORM 1; END $$", "DO"),
    # COPY into the server, or to a server file or program.
    writes("COPY t FROM STDIN", "COPY FROM loads data"),
    writes("COPY t FROM '/tmp/x.csv' WITH (FORMAT csv)", "COPY FROM"),
    writes("COPY t TO '/tmp/x.csv'", "server file or program"),
    writes("COPY (SELECT 1) TO PROGRAM 'cat'", "server file or program"),
    # Locks, transaction control, session state.
    writes("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", "LOCK takes table locks", replica="rejected"),
    writes("LOCK t", "LOCK"),
    writes("BEGIN", "BEGIN is transaction control"),
    writes("BEGIN ISOLATION LEVEL REPEATABLE READ", "BEGIN"),
    writes("START TRANSACTION READ ONLY", "START TRANSACTION"),
    writes("COMMIT", "COMMIT is transaction control"),
    writes("END", "COMMIT"),
    writes("ROLLBACK", "ROLLBACK"),
    writes("ABORT", "ROLLBACK"),
    writes("SAVEPOINT sp", "SAVEPOINT"),
    writes("RELEASE SAVEPOINT sp", "RELEASE SAVEPOINT"),
    writes("ROLLBACK TO SAVEPOINT sp", "ROLLBACK TO SAVEPOINT"),
    writes("PREPARE TRANSACTION 'tx1'", "PREPARE TRANSACTION"),
    writes("COMMIT PREPARED 'tx1'", "COMMIT PREPARED"),
    writes("ROLLBACK PREPARED 'tx1'", "ROLLBACK PREPARED"),
    writes("BEGIN; SELECT 1; COMMIT", "statement 1 of 3: BEGIN"),
    writes("SET search_path = public", "SET changes session state"),
    writes("SET LOCAL work_mem = '1MB'", "SET LOCAL changes session state"),
    writes("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", "SET TRANSACTION"),
    writes("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", "SET SESSION"),
    writes("SET TIME ZONE 'UTC'", "SET"),
    writes("RESET work_mem", "RESET changes session state"),
    writes("RESET ALL", "RESET"),
    writes("SET CONSTRAINTS ALL DEFERRED", "SET CONSTRAINTS"),
    writes("LISTEN ch", "LISTEN works only on the primary", replica="rejected"),
    writes("NOTIFY ch, 'payload'", "NOTIFY", replica="rejected"),
    writes("UNLISTEN *", "UNLISTEN"),
    writes("DECLARE c CURSOR FOR SELECT * FROM t", "DECLARE uses session state"),
    writes("FETCH NEXT FROM c", "FETCH"),
    writes("MOVE c", "MOVE"),
    writes("CLOSE ALL", "CLOSE"),
    writes("PREPARE p AS SELECT 1", "PREPARE uses session state"),
    writes("EXECUTE p", "EXECUTE"),
    writes("DEALLOCATE ALL", "DEALLOCATE"),
    writes("DISCARD ALL", "DISCARD"),
    writes("LOAD 'auto_explain'", "LOAD"),
    # Functions that write or need the primary, wherever they are called.
    writes("SELECT nextval('s')", "calls nextval()", replica="rejected"),
    writes("SELECT NEXTVAL('s')", "calls nextval()"),
    writes("SELECT pg_catalog.nextval('s')", "calls pg_catalog.nextval()"),
    writes("SELECT PG_CATALOG.NEXTVAL('s')", "calls pg_catalog.nextval()"),
    writes("SELECT setval('s', 10)", "calls setval()", replica="rejected"),
    writes("SELECT currval('s')", "calls currval()"),
    writes("SELECT lastval()", "calls lastval()"),
    writes("SELECT * FROM t WHERE id = nextval('s')", "nextval"),
    writes("SELECT * FROM nextval('s')", "nextval"),
    writes("SELECT * FROM t ORDER BY nextval('s')", "nextval"),
    writes("SELECT id FROM t GROUP BY id HAVING max(id) > nextval('s')", "nextval"),
    writes("SELECT (SELECT nextval('s'))", "nextval"),
    writes("SELECT * FROM t, LATERAL (SELECT nextval('s')) AS x", "nextval"),
    writes("WITH x AS (SELECT nextval('s')) SELECT * FROM x", "nextval"),
    writes("VALUES (nextval('s'))", "nextval"),
    writes("SELECT coalesce(NULL, nextval('s'))", "nextval"),
    writes("SELECT CASE WHEN true THEN setval('s', 1) END", "setval"),
    writes("SELECT jsonb_agg(nextval('s')) FROM t", "nextval"),
    writes("SELECT 1 FROM t WHERE id IN (VALUES (currval('s')))", "currval"),
    writes("COPY (SELECT nextval('s')) TO STDOUT", "nextval"),
    writes("SELECT pg_advisory_lock(1)", "calls pg_advisory_lock()"),
    writes("SELECT pg_advisory_xact_lock(1)", "pg_advisory_xact_lock"),
    writes("SELECT pg_try_advisory_lock_shared(1)", "pg_try_advisory_lock_shared"),
    writes("SELECT pg_advisory_unlock_all()", "pg_advisory_unlock_all"),
    writes("SELECT * FROM t WHERE pg_try_advisory_xact_lock(id)", "pg_try_advisory_xact_lock"),
    writes("SELECT txid_current()", "calls txid_current()", replica="rejected"),
    writes("SELECT pg_current_xact_id()", "pg_current_xact_id", replica="rejected"),
    writes("SELECT pg_notify('ch', 'x')", "calls pg_notify()", replica="rejected"),
    writes("SELECT lo_import('/etc/hostname')", "calls lo_import()"),
    writes("SELECT lo_from_bytea(0, 'x')", "lo_from_bytea"),
    writes("SELECT lo_get(1)", "lo_get"),
    writes("SELECT set_config('work_mem', '1MB', false)", "calls set_config()"),
    writes("SELECT pg_switch_wal()", "pg_switch_wal", replica="rejected"),
    writes("SELECT pg_current_wal_lsn()", "pg_current_wal_lsn", replica="rejected"),
    writes("SELECT pg_terminate_backend(1)", "pg_terminate_backend"),
    writes("SELECT pg_cancel_backend(1)", "pg_cancel_backend"),
    writes("SELECT pg_reload_conf()", "pg_reload_conf"),
    writes("SELECT pg_create_physical_replication_slot('x')", "replication_slot"),
    writes("SELECT pg_create_logical_replication_slot('x', 'pgoutput')", "replication_slot"),
    writes("SELECT pg_drop_replication_slot('x')", "pg_drop_replication_slot"),
    writes("SELECT pg_stat_reset()", "pg_stat_reset"),
    writes("SELECT pg_replication_origin_create('x')", "pg_replication_origin_create"),
    writes("SELECT pg_logical_emit_message(true, 'x', 'y')", "pg_logical_emit_message"),
    writes("SELECT pg_backup_start('x')", "pg_backup_start"),
    writes("SELECT dblink_exec('dbname=x', 'DELETE FROM t')", "dblink_exec"),
    # Several statements: a write if any one is.
    writes("SELECT 1; DELETE FROM t", "statement 2 of 2: DELETE", replica="rejected"),
    writes("SELECT 1; SELECT nextval('s')", "statement 2 of 2: calls nextval()"),
    writes("SHOW work_mem; SET work_mem = '1MB'", "statement 2 of 2: SET"),
    # SQL that does not parse goes to the primary, which reports the real error.
    writes("SELEC 1", "could not parse: syntax error"),
    writes("SELECT * FROM", "could not parse"),
    writes("SELECT 'unterminated", "could not parse"),
    writes("DELETE t", "could not parse"),
    writes("SELECT 1 FROM t WHERE", "could not parse"),
    writes("SELECT 1\x00; DELETE FROM t", "NUL character"),
]


def _case_id(case: Case) -> str:
    return case.sql if len(case.sql) <= 60 else case.sql[:57] + "..."


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_classifies_statement(case: Case) -> None:
    result = classify(case.sql)

    assert result.kind == case.kind, result.reason
    assert result.is_read is (case.kind == "read")
    assert case.reason in result.reason
    assert result.reason == result.reason.strip()
    assert "\n" not in result.reason


def test_table_is_big_and_covers_both_kinds() -> None:
    assert len(CASES) >= 100
    assert len({case.sql for case in CASES}) == len(CASES), "duplicate statements"
    assert sum(case.kind == "read" for case in CASES) >= 40
    assert sum(case.replica == "rejected" for case in CASES) >= 20


def test_statement_count() -> None:
    assert classify("").statement_count == 0
    assert classify("-- nothing\n/* at all */").statement_count == 0
    assert classify("SELECT 1").statement_count == 1
    assert classify("SELECT 1;").statement_count == 1
    assert classify("SELECT 1; SELECT 2;; SELECT 3").statement_count == 3


def test_parse_error_carries_the_parser_message() -> None:
    result = classify("SELEC 1")

    assert result.kind == "write"
    assert result.parse_error == 'syntax error at or near "SELEC", at index 0'
    assert result.reason == f"could not parse: {result.parse_error}"
    assert result.statement_count == 0
    assert classify("SELECT 1").parse_error is None


def test_text_the_parser_cannot_take_is_a_write() -> None:
    # A lone surrogate cannot be encoded as UTF-8 for the parser.
    surrogate = classify("SELECT '\ud800'")
    nul = classify("SELECT 1\x00")

    assert surrogate.kind == "write"
    assert surrogate.parse_error is not None
    assert nul.kind == "write"
    assert nul.parse_error is not None


def test_too_long_sql_is_a_write_without_parsing() -> None:
    sql = "SELECT 1" + " " * MAX_CLASSIFIED_CHARS

    result = classify(sql)

    assert result.kind == "write"
    assert "too long" in result.reason


@pytest.mark.processes
def test_deeply_nested_sql_does_not_crash_the_process() -> None:
    # pglast converts the tree with C recursion; on a default thread stack a chain this deep
    # overflows it and kills the process. Run in a child so that a regression fails this test
    # instead of the whole session.
    code = (
        "from endpoints.core.classify import classify\n"
        "for sql in ('SELECT 1' + '+1' * 60_000, 'SELECT 1' + ' UNION SELECT 2' * 16_000):\n"
        "    result = classify(sql)\n"
        "    assert result.kind == 'read', result\n"
        "print('ok')\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.strip() == "ok"


# (sql, kind when strict=False, kind when strict=True, reason fragment in strict mode)
STRICT_CASES: list[tuple[str, Kind, Kind, str]] = [
    ("SELECT my_func(1)", "read", "write", "calls my_func(), which is not known to be read-only"),
    ("SELECT count(*) FROM t WHERE my_func(id) > 0", "read", "write", "my_func"),
    ("SELECT classify_t.my_func(1)", "read", "write", "classify_t.my_func"),
    ("SELECT public.lower('x')", "read", "write", "public.lower"),
    ("EXPLAIN SELECT my_func(1)", "read", "write", "my_func"),
    ("SELECT dblink('dbname=x', 'SELECT 1')", "read", "write", "dblink"),
    ("SELECT nextval('s')", "write", "write", "which writes or needs the primary"),
    ("SELECT count(*) FROM t", "read", "read", "SELECT only reads"),
    ("SELECT now()", "read", "read", ""),
    ("SELECT lower(name), upper(name), length(name) FROM t", "read", "read", ""),
    ("SELECT pg_catalog.lower('x')", "read", "read", ""),
    (
        "SELECT row_number() OVER (), rank() OVER (ORDER BY id), sum(id) OVER () FROM t",
        "read",
        "read",
        "",
    ),
    ("SELECT array_agg(id), string_agg(name, ','), max(id), avg(id) FROM t", "read", "read", ""),
    ("SELECT random(), clock_timestamp(), gen_random_uuid(), pg_sleep(0)", "read", "read", ""),
    ("SELECT * FROM generate_series(1, 3)", "read", "read", ""),
    (
        "SELECT current_timestamp, coalesce(NULL, 1), greatest(1, 2), CAST(1 AS text)",
        "read",
        "read",
        "",
    ),
    (
        "SELECT extract(year FROM now()), trim(both ' ' FROM 'a'), 'a' LIKE 'b' ESCAPE 'c'",
        "read",
        "read",
        "",
    ),
    ("SELECT substring('abc' FROM 1 FOR 1), overlay('abc' PLACING 'x' FROM 1)", "read", "read", ""),
    ("SELECT SYSTEM_USER", "read", "read", ""),
    ("SELECT txid_current_snapshot()", "read", "read", ""),
    ("SELECT txid_current()", "write", "write", "txid_current"),
]


@pytest.mark.parametrize(("sql", "lenient", "strict", "reason"), STRICT_CASES)
def test_strict_mode_needs_known_read_only_functions(
    sql: str, lenient: Kind, strict: Kind, reason: str
) -> None:
    assert classify(sql).kind == lenient
    result = classify(sql, strict=True)
    assert result.kind == strict
    assert reason in result.reason


def test_functions_lists_every_call_lower_cased() -> None:
    result = classify(
        "WITH x AS (SELECT Lower(name) AS n FROM t) "
        "SELECT pg_catalog.NEXTVAL('s'), count(*), my_schema.my_func(n) "
        "FROM x, generate_series(1, 2) WHERE EXISTS (SELECT upper('a'))"
    )

    assert result.functions == {
        "lower",
        "nextval",
        "pg_catalog.nextval",
        "count",
        "my_func",
        "my_schema.my_func",
        "generate_series",
        "upper",
    }


def test_functions_of_writes_and_of_non_calls() -> None:
    ddl = classify("CREATE TABLE x (id bigint DEFAULT nextval('s'), at timestamptz DEFAULT now())")

    assert ddl.functions == {"nextval", "now"}
    assert classify("CALL my_proc(1)").functions == {"my_proc"}
    # SQL-syntax constructs that are not function calls, and names inside strings.
    assert classify("SELECT CURRENT_TIMESTAMP, COALESCE(1, 2), 'nextval(1)'").functions == set()
    assert classify("SELEC nextval(1)").functions == set()


def test_classification_is_immutable() -> None:
    result = classify("SELECT 1")

    with pytest.raises(AttributeError):
        result.kind = "write"  # type: ignore[misc]
    assert isinstance(result.functions, frozenset)
    assert result == Classification(
        "read", "SELECT only reads", 1, frozenset(), None, session_state=False, cursor_ok=True
    )


def test_repeated_sql_is_served_from_the_cache() -> None:
    sql = "SELECT id FROM t WHERE id = 42 -- cache test"
    before = classify.cache_info()

    first = classify(sql)
    second = classify(sql)

    after = classify.cache_info()
    assert second is first
    assert after.hits >= before.hits + 1
    assert after.misses >= before.misses + 1
    assert after.maxsize is not None
    assert after.maxsize >= 1024
    # Strict and lenient answers are cached apart; a keyword default is the same entry.
    assert classify(sql, strict=True) is classify(sql, strict=True)
    assert classify(sql, strict=False) is first


def test_cache_clear_empties_the_cache() -> None:
    sql = "SELECT 'cache clear test'"
    first = classify(sql)

    classify.cache_clear()

    assert classify.cache_info().currsize == 0
    again = classify(sql)
    assert again == first
    assert again is not first


def test_cached_lookup_is_cheap() -> None:
    sql = "SELECT t.id, u.note FROM t JOIN u ON u.t_id = t.id WHERE t.id = 7 -- timing"
    classify(sql)
    rounds = 20_000

    started = time.perf_counter()
    for _ in range(rounds):
        classify(sql)
    per_call = (time.perf_counter() - started) / rounds

    # About 0.2 µs in practice; the bound leaves room for a slow, busy CI machine.
    assert per_call < 20e-6


def test_long_sql_is_classified_but_not_cached() -> None:
    # Built from constants only: no injection here.
    sql = "SELECT x FROM t WHERE id IN (" + ", ".join(map(str, range(4000))) + ")"  # noqa: S608
    assert len(sql) > CACHED_MAX_CHARS
    before = classify.cache_info()

    result = classify(sql)

    assert result.kind == "read"
    assert classify.cache_info().currsize == before.currsize
    assert classify(sql + "; DELETE FROM t").kind == "write"  # noqa: S608


def test_read_only_functions_come_from_the_catalog() -> None:
    assert len(READ_ONLY_FUNCTIONS) > 2000
    for name in ("count", "sum", "avg", "max", "row_number", "rank", "lag", "lower", "now"):
        assert name in READ_ONLY_FUNCTIONS, name
    for name in ("random", "clock_timestamp", "pg_sleep", "gen_random_uuid", "timeofday"):
        assert name in READ_ONLY_FUNCTIONS, name
    # Stable in the catalog, but they assign a transaction id.
    assert "txid_current" not in READ_ONLY_FUNCTIONS
    assert "pg_current_xact_id" not in READ_ONLY_FUNCTIONS
    assert not any(is_write_function(name) for name in READ_ONLY_FUNCTIONS)
    assert all(name == name.lower() for name in READ_ONLY_FUNCTIONS)


@pytest.mark.parametrize(
    "name",
    [
        "nextval",
        "setval",
        "currval",
        "lastval",
        "pg_advisory_lock",
        "pg_advisory_lock_shared",
        "pg_advisory_xact_lock",
        "pg_advisory_xact_lock_shared",
        "pg_try_advisory_lock",
        "pg_try_advisory_xact_lock_shared",
        "pg_advisory_unlock",
        "pg_advisory_unlock_shared",
        "pg_advisory_unlock_all",
        "txid_current",
        "txid_current_if_assigned",
        "pg_current_xact_id",
        "pg_current_xact_id_if_assigned",
        "pg_notify",
        "lo_create",
        "lo_creat",
        "lo_import",
        "lo_export",
        "lo_unlink",
        "lo_open",
        "lo_write",
        "lo_put",
        "lo_truncate",
        "lo_from_bytea",
        "lo_anything_new",
        "set_config",
        "pg_switch_wal",
        "pg_create_restore_point",
        "pg_create_physical_replication_slot",
        "pg_create_logical_replication_slot",
        "pg_drop_replication_slot",
        "pg_logical_emit_message",
        "pg_terminate_backend",
        "pg_cancel_backend",
        "pg_reload_conf",
        "pg_rotate_logfile",
        "pg_promote",
        "pg_start_backup",
        "pg_backup_start",
        "pg_backup_stop",
        "pg_stat_reset",
        "pg_stat_reset_shared",
        "pg_stat_reset_single_table_counters",
        "pg_replication_origin_create",
        "pg_replication_origin_session_setup",
        "dblink_exec",
        "pg_import_system_collations",
        "pg_current_wal_lsn",
        "pg_current_wal_insert_lsn",
        "pg_current_wal_flush_lsn",
    ],
)
def test_write_functions(name: str) -> None:
    assert is_write_function(name)
    assert is_write_function(f"pg_catalog.{name.upper()}")
    result = classify(f"SELECT {name}()")
    assert result.kind == "write"
    assert f"calls {name}()" in result.reason


def test_write_functions_constant_is_lower_case_and_excludes_reads() -> None:
    assert all(name == name.lower() for name in WRITE_FUNCTIONS)
    for name in ("txid_current_snapshot", "pg_current_snapshot", "lower", "count", "now"):
        assert not is_write_function(name), name


# Against a real hot standby

SCHEMA_SQL = """
DROP SCHEMA IF EXISTS classify_t CASCADE;
CREATE SCHEMA classify_t;
CREATE TABLE classify_t.t (id int PRIMARY KEY, name text, grp int);
CREATE TABLE classify_t.u (id int PRIMARY KEY, t_id int, note text);
INSERT INTO classify_t.t VALUES (1, 'alpha', 1), (2, 'beta', 1), (3, 'gamma', 2);
INSERT INTO classify_t.u VALUES (1, 1, 'one'), (2, 3, 'three');
CREATE VIEW classify_t.v AS SELECT id, name FROM classify_t.t;
CREATE SEQUENCE classify_t.s;
CREATE FUNCTION classify_t.my_func(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT $1';
"""

RUNS_ON_REPLICA = [case for case in CASES if case.replica == "runs"]
REJECTED_BY_REPLICA = [case for case in CASES if case.replica == "rejected"]
# SQLSTATE read_only_sql_transaction, raised for writes in a read-only transaction and for
# most statements that a standby refuses.
READ_ONLY_SQL_TRANSACTION = "25006"


@pytest.fixture(scope="module")
def replica_conn(pg_cluster: LocalPostgresCluster) -> Iterator[psycopg.Connection[Any]]:
    """A connection to a hot standby that has replayed the classify_t schema."""
    with psycopg.connect(**pg_cluster.conninfo("primary"), autocommit=True) as primary:
        primary.execute(SCHEMA_SQL)
    pg_cluster.wait_for_replay(timeout_s=30)
    replica = pg_cluster.replicas[0]
    with psycopg.connect(
        **pg_cluster.conninfo(replica, options="-c search_path=classify_t")
    ) as conn:
        in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        conn.rollback()
        assert in_recovery == (True,), f"{replica.name} is not a standby"
        yield conn


def _run(conn: psycopg.Connection[Any], sql: str) -> None:
    """Run ``sql`` in a transaction that is rolled back, reading any result."""
    try:
        with conn.cursor() as cursor:
            if sql.lstrip().upper().startswith("COPY"):
                with cursor.copy(sql) as copy:
                    for _ in copy:
                        pass
            else:
                cursor.execute(sql)
    finally:
        conn.rollback()


def test_every_case_the_replica_checks_is_classified_as_expected() -> None:
    # The replica tests only add meaning if these are the kinds the classifier gives.
    assert all(classify(case.sql).kind == "read" for case in RUNS_ON_REPLICA)
    assert all(classify(case.sql).kind == "write" for case in REJECTED_BY_REPLICA)


@pytest.mark.parametrize("case", RUNS_ON_REPLICA, ids=_case_id)
def test_read_runs_on_a_hot_standby(case: Case, replica_conn: psycopg.Connection[Any]) -> None:
    try:
        _run(replica_conn, case.sql)
    except psycopg.Error as exc:
        pytest.fail(f"the standby refused a read: [{exc.sqlstate}] {exc}")


@pytest.mark.parametrize("case", REJECTED_BY_REPLICA, ids=_case_id)
def test_write_is_refused_by_a_hot_standby(
    case: Case, replica_conn: psycopg.Connection[Any]
) -> None:
    with pytest.raises(psycopg.Error) as raised:
        _run(replica_conn, case.sql)

    exc = raised.value
    # Refused because the server is a standby, not because the statement is wrong.
    assert exc.sqlstate == READ_ONLY_SQL_TRANSACTION or "recovery" in str(exc), (
        f"[{exc.sqlstate}] {exc}"
    )


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("SELECT v FROM t WHERE id = %s", "read"),
        ("SELECT v FROM t WHERE id = %(id)s AND other = %(id)s", "read"),
        ("SELECT v FROM t WHERE note LIKE 'a%%' AND id = %s", "read"),
        ("SELECT %b::bytea, %t::text", "read"),
        ("UPDATE t SET v = %s WHERE id = %s", "write"),
        ("SELECT nextval(%s)", "write"),
    ],
)
def test_psycopg_placeholders_are_read_as_parameters(sql: str, kind: str) -> None:
    result = classify(sql, client_placeholders=True)
    assert result.kind == kind, result
    assert result.parse_error is None


def test_placeholders_become_numbered_parameters() -> None:
    assert to_server_placeholders("a = %s AND b = %s AND c LIKE '%%x'") == (
        "a = $1 AND b = $2 AND c LIKE '%x'"
    )
    assert to_server_placeholders("a = %(x)s OR b = %(y)s OR c = %(x)s") == (
        "a = $1 OR b = $2 OR c = $1"
    )
    # Without the flag the text is parsed as it is, and %s is not PostgreSQL syntax.
    assert classify("SELECT v FROM t WHERE id = %s").kind == "write"


@pytest.mark.parametrize(
    "sql",
    [
        "SET search_path = x",
        "RESET ALL",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
        "LISTEN ch",
        "UNLISTEN *",
        "BEGIN",
        "PREPARE p AS SELECT 1",
        "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
        "SELECT set_config('search_path', 'x', false)",
        "SELECT pg_advisory_lock(1)",
        "SELECT 1; SET work_mem = '1MB'",
    ],
)
def test_statements_that_leave_session_state_say_so(sql: str) -> None:
    assert classify(sql).session_state


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "INSERT INTO t VALUES (1)",
        "SELECT pg_advisory_xact_lock(1)",  # released at the end of the transaction
        "SHOW work_mem",
        "CREATE TABLE t (id int)",
    ],
)
def test_statements_that_leave_no_session_state(sql: str) -> None:
    assert not classify(sql).session_state


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "select * from t where id = $1 -- trailing comment",
        "VALUES (1), (2)",
        "TABLE t",
        "WITH x AS (SELECT 1 AS a) SELECT a FROM x",
        "SELECT 1 UNION ALL SELECT 2",
        "SELECT 1;",
    ],
)
def test_single_reading_selects_can_run_as_a_cursor(sql: str) -> None:
    assert classify(sql).cursor_ok


@pytest.mark.parametrize(
    "sql",
    [
        "SHOW work_mem",  # DECLARE takes only SELECT and VALUES
        "EXPLAIN SELECT 1",
        "SELECT 1; SELECT 2",  # a cursor holds one query
        "SELECT * INTO t2 FROM t",
        "SELECT * FROM t FOR UPDATE",
        "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        "INSERT INTO t VALUES (1)",
        "SELEC 1",
        "",
    ],
)
def test_other_statements_do_not_run_as_a_cursor(sql: str) -> None:
    assert not classify(sql).cursor_ok


@pytest.mark.parametrize(
    "sql",
    [
        "VACUUM t",
        "VACUUM (ANALYZE, VERBOSE) t",
        "CREATE INDEX CONCURRENTLY i ON t (a)",
        "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS i ON t (a)",
        "DROP INDEX CONCURRENTLY i",
        "REINDEX TABLE CONCURRENTLY t",
        "REINDEX (CONCURRENTLY) INDEX i",
        "REINDEX SCHEMA public",
        "REINDEX DATABASE app",
        "CREATE DATABASE d",
        "DROP DATABASE d",
        "CREATE TABLESPACE s LOCATION '/srv/s'",
        "ALTER SYSTEM SET work_mem = '8MB'",
        "CLUSTER",
        "DROP SUBSCRIPTION s",
    ],
)
def test_statements_postgresql_refuses_in_a_transaction_block_say_so(sql: str) -> None:
    classification = classify(sql)
    assert classification.kind == "write"
    assert classification.outside_transaction


@pytest.mark.parametrize(
    "sql",
    [
        "ANALYZE t",
        "CREATE INDEX i ON t (a)",
        "DROP INDEX i",
        "REINDEX TABLE t",
        "CLUSTER t USING i",
        "INSERT INTO t VALUES (1)",
        "SELECT 1",
        "VACUUM t; VACUUM u",  # two statements are one implicit transaction anyway
    ],
)
def test_statements_that_run_in_a_transaction_block_do_not(sql: str) -> None:
    assert not classify(sql).outside_transaction
