"""endpoints.services.sqlguard: what an assistant's SQL may do, and proof on the real cluster."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from pglast.parser import parse_sql

from endpoints import routing
from endpoints.devstack.localcluster import LocalPostgresCluster
from endpoints.models import Cluster
from endpoints.services import queries, sqlguard
from endpoints.services.sqlguard import Refused

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
    ("ALTER SYSTEM SET work_mem = '1GB'", "ALTER SYSTEM changes the server's configuration"),
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
    # Secrets, whatever the role: relations however they are named and wherever they appear.
    ("SELECT rolpassword FROM pg_catalog.pg_authid", "pg_authid holds every role's password"),
    ('SELECT rolpassword FROM "pg_authid"', "pg_authid holds"),
    ("SELECT rolpassword FROM PG_CATALOG.PG_AUTHID", "pg_authid holds"),
    ('SELECT * FROM pg_catalog."PG_AUTHID"', "pg_authid holds"),
    ("TABLE pg_authid", "pg_authid holds"),
    ("TABLE pg_catalog.pg_shadow", "pg_shadow shows every role's password verifier"),
    ("SELECT * FROM ONLY pg_authid", "pg_authid holds"),
    ("SELECT * FROM pg_authid TABLESAMPLE SYSTEM (100)", "pg_authid holds"),
    ("WITH a AS (SELECT rolpassword FROM pg_authid) SELECT * FROM a", "pg_authid holds"),
    (
        "WITH a AS (SELECT 1), b AS (SELECT * FROM (WITH c AS (TABLE pg_shadow) SELECT * FROM c) "
        "s) SELECT * FROM b",
        "pg_shadow shows",
    ),
    ("SELECT (SELECT rolpassword FROM pg_authid LIMIT 1)", "pg_authid holds"),
    ("SELECT 1 WHERE EXISTS (SELECT FROM pg_authid WHERE rolpassword LIKE 'S%')", "pg_authid"),
    (
        "SELECT r.rolname, p.v FROM pg_roles r, "
        "LATERAL (SELECT rolpassword AS v FROM pg_authid a WHERE a.oid = r.oid) p",
        "pg_authid holds",
    ),
    ("SELECT 'x' UNION ALL SELECT rolpassword FROM pg_authid", "pg_authid holds"),
    ("SELECT rolname FROM pg_roles JOIN pg_authid USING (oid, rolname)", "pg_authid holds"),
    ("SELECT 1 ORDER BY (SELECT count(*) FROM pg_authid)", "pg_authid holds"),
    ("SELECT * FROM pg_roles WHERE oid IN (SELECT usesysid FROM pg_shadow)", "pg_shadow"),
    (
        "SELECT histogram_bounds::text FROM pg_catalog.pg_stats WHERE tablename = 'pg_authid'",
        "pg_stats shows sampled values of every table's columns, pg_authid's password",
    ),
    ("SELECT stavalues1::text FROM pg_statistic", "pg_statistic holds sampled values"),
    ("SELECT setting FROM pg_settings WHERE name = 'primary_conninfo'", "SHOW name or"),
    ("SELECT subconninfo FROM pg_subscription", "pg_subscription holds"),
    ("SELECT data FROM pg_largeobject", "pg_largeobject holds large objects' data"),
    (
        "EXPLAIN ANALYZE SELECT 1 FROM pg_authid WHERE rolpassword LIKE 'SCRAM-SHA-256$4096:a%'",
        "pg_authid holds",
    ),
    ("EXPLAIN SELECT * FROM pg_shadow", "pg_shadow shows"),
    # Functions that read them by a name in a string, or back the views.
    ("SELECT table_to_xml('pg_authid', true, false, '')", "table_to_xml() exports every row"),
    ("SELECT table_to_xml('pg_catalog.pg_authid'::regclass, true, false, '')", "table_to_xml()"),
    ("SELECT database_to_xml(true, false, '')", "database_to_xml() exports"),
    ("SELECT * FROM pg_show_all_settings()", "pg_show_all_settings() returns every setting"),
    ("SELECT x.table_to_xml FROM CAST('pg_authid' AS regclass) x", "attribute notation"),
    ("SELECT setseed(0.5)", "setseed() seeds random() for the session"),
    ("SELECT pg_stat_reset()", "pg_stat_reset() resets statistics, which a rollback does not"),
    # Settings: SHOW and current_setting(), however the name is spelled.
    ("SHOW primary_conninfo", "the setting primary_conninfo holds the standby's connection"),
    ("SHOW PRIMARY_CONNINFO", "the setting primary_conninfo holds"),
    ('SHOW "Primary_Conninfo"', "the setting primary_conninfo holds"),
    ("SHOW ALL", "SHOW ALL shows every setting, secrets included"),
    ('SHOW "all"', "SHOW ALL shows every setting"),
    ("SELECT current_setting('primary_conninfo')", "the setting primary_conninfo holds"),
    ("SELECT current_setting('PRIMARY_CONNINFO', true)", "the setting primary_conninfo holds"),
    ("SELECT pg_catalog.current_setting('primary_conninfo')", "the setting primary_conninfo"),
    ("SELECT \"current_setting\"('primary_conninfo')", "the setting primary_conninfo"),
    ("SELECT current_setting('primary_conninfo'::text)", "the setting primary_conninfo"),
    ("SELECT current_setting(CAST('primary_conninfo' AS text))", "the setting primary_conninfo"),
    ("SELECT current_setting(E'primary\\x5fconninfo')", "the setting primary_conninfo"),
    ("SELECT current_setting(U&'primary\\005fconninfo')", "the setting primary_conninfo"),
    ("SELECT current_setting($$primary_conninfo$$)", "the setting primary_conninfo"),
    ("SELECT current_setting(' primary_conninfo ')", "the setting primary_conninfo"),
    ("SELECT 1 WHERE current_setting('archive_command') LIKE '%s3%'", "archive_command is a"),
    ("SELECT current_setting('ssl_key_file')", "ssl_key_file names the server's TLS private"),
    ("SELECT current_setting('myext.PASSWORD', true)", 'its name contains "password"'),
    ("SHOW app.settings.jwt_secret", 'its name contains "secret"'),
    # current_setting() of a name the guard cannot read, or in attribute notation.
    ("SELECT current_setting(upper('primary_conninfo'))", "current_setting() of anything but"),
    ("SELECT current_setting('primary_' || 'conninfo')", "current_setting() of anything but"),
    ("SELECT current_setting(lower('X')::text)", "current_setting() of anything but"),
    (
        "SELECT current_setting(n) FROM (VALUES ('primary_conninfo')) v(n)",
        "current_setting() of anything but a string constant",
    ),
    ("SELECT current_setting(NULL)", "current_setting() of anything but a string constant"),
    (
        "SELECT x.current_setting FROM CAST('primary_conninfo' AS text) x",
        ".current_setting calls current_setting() in attribute notation",
    ),
    ("SELECT ('primary_conninfo'::text).current_setting", "current_setting() in attribute"),
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
    # Names of refused relations and settings where they are not references or reads.
    ("SELECT 'pg_authid' AS name, 'SHOW primary_conninfo' AS stmt", None),
    ("SELECT 1 AS one -- FROM pg_authid", None),
    ("SELECT 1 AS one /* TABLE pg_shadow */", None),
    ("SELECT $$SELECT rolpassword FROM pg_authid$$ AS text", None),
    ("SELECT a.pg_authid FROM (SELECT 1 AS pg_authid) a", None),
    ("SELECT relname FROM pg_class WHERE relname IN ('pg_authid', 'pg_statistic')", None),
    # Ordinary settings and catalog views.
    ("SHOW primary_slot_name", None),
    ("SHOW password_encryption", None),
    ("SELECT current_setting('work_mem'::text, true) AS work_mem", None),
    ("SELECT current_setting('myext.enabled', true) AS enabled", None),
    ("SELECT pid, state FROM pg_stat_activity", None),
    ("SELECT * FROM pg_catalog.pg_roles", None),
    ("SELECT usename FROM pg_user", None),
    ("SELECT count(*) FROM pg_largeobject_metadata", None),
    ("SELECT pg_stat_clear_snapshot()", None),
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
        "SELECT rolpassword FROM pg_authid": (
            "refused: pg_authid holds every role's password verifier"
        ),
        "SHOW primary_conninfo": (
            "refused: the setting primary_conninfo holds the standby's connection string, "
            "replication password included"
        ),
        "SELECT current_setting('myext.password', true)": (
            'refused: the setting myext.password may hold a secret: its name contains "password"'
        ),
        "SHOW ALL": (
            "refused: SHOW ALL shows every setting, secrets included; use SHOW name for one setting"
        ),
        "ALTER SYSTEM SET archive_command = 'true'": (
            "refused: ALTER SYSTEM changes the server's configuration (primary_conninfo, "
            "archive_command...), which is the operator's job"
        ),
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
    with pytest.raises(Refused, match="the setting primary_conninfo"):
        sqlguard.check_read(nested.replace("1", "current_setting('primary_conninfo')"))
    subqueries = "SELECT * FROM " + "(SELECT * FROM " * 1000 + "pg_authid" + ") s" * 1000
    with pytest.raises(Refused, match="pg_authid holds"):
        sqlguard.check_read(subqueries)
    assert sqlguard.check_read(subqueries.replace("pg_authid", "pg_roles")).is_read


def test_one_walk_of_the_tree_per_uncached_statement(monkeypatch: pytest.MonkeyPatch) -> None:
    """Relations, settings, attributes and calls come from one walk; a passing read is cached."""
    walks: list[object] = []
    collect = sqlguard._collect_names

    def counting(top: Any) -> Any:
        walks.append(top)
        return collect(top)

    monkeypatch.setattr(sqlguard, "_collect_names", counting)
    sql = "SELECT r.rolname, current_setting('work_mem') FROM pg_roles r -- one walk"
    assert sqlguard.check_read(sql).is_read
    assert len(walks) == 1
    assert sqlguard.check_read(sql).is_read
    assert len(walks) == 1
    with pytest.raises(Refused):
        sqlguard.check_write("INSERT INTO t SELECT current_setting('primary_conninfo')")
    assert len(walks) == 2


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
    for name in ("TABLE_TO_XML", "pg_stat_reset_new", "pg_replication_origin_x", "setseed"):
        assert sqlguard.refused_function_reason(name) is not None, name
    for name in ("pg_logical_slot_peek_changes", "pg_catalog.pg_show_all_settings"):
        assert sqlguard.refused_function_reason(name) is not None, name
    for name in ("current_setting", "pg_stat_clear_snapshot", "pg_get_wal_replay_pause_state"):
        assert sqlguard.refused_function_reason(name) is None, name


# The refusal table

# What the guard refused before the table existed: every one must still be refused.
PREVIOUS_FUNCTIONS = [
    "pg_read_file",
    "pg_read_binary_file",
    "pg_stat_file",
    "pg_ls_dir",
    "pg_ls_logdir",
    "pg_ls_waldir",
    "pg_ls_tmpdir",
    "pg_ls_archive_statusdir",
    "pg_ls_logicalsnapdir",
    "pg_ls_logicalmapdir",
    "pg_ls_replslotdir",
    "pg_file_write",
    "pg_file_rename",
    "pg_file_unlink",
    "pg_file_sync",
    "pg_file_read",
    "pg_file_length",
    "pg_logdir_ls",
    "lo_import",
    "lo_export",
    "lo_close",
    "lo_creat",
    "lo_create",
    "lo_from_bytea",
    "lo_get",
    "lo_lseek",
    "lo_lseek64",
    "lo_open",
    "lo_put",
    "lo_tell",
    "lo_tell64",
    "lo_truncate",
    "lo_truncate64",
    "lo_unlink",
    "loread",
    "lowrite",
    "dblink",
    "dblink_connect",
    "dblink_connect_u",
    "dblink_exec",
    "dblink_open",
    "dblink_fetch",
    "dblink_send_query",
    "dblink_get_result",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_log_backend_memory_contexts",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_rotate_logfile_old",
    "pg_promote",
    "set_config",
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "ts_stat",
    "ts_rewrite",
]
PREVIOUS_PREFIXES = ["pg_ls_", "pg_file_", "lo_", "dblink_"]

# What the secrets review asked for.
REQUIRED_RELATIONS = [
    "pg_authid",
    "pg_shadow",
    "pg_user_mapping",
    "pg_user_mappings",
    "pg_hba_file_rules",
    "pg_ident_file_mappings",
    "pg_file_settings",
    "pg_settings",
    "pg_statistic",
    "pg_statistic_ext_data",
    "pg_stats",
    "pg_subscription",
    "pg_largeobject",
]
REQUIRED_SETTINGS = [
    "primary_conninfo",
    "archive_command",
    "archive_library",
    "restore_command",
    "archive_cleanup_command",
    "recovery_end_command",
    "ssl_passphrase_command",
    "ssl_key_file",
    "ssl_cert_file",
    "ssl_ca_file",
    "ssl_crl_file",
    "ssl_crl_dir",
    "krb_server_keyfile",
    "data_directory",
    "config_file",
    "hba_file",
    "ident_file",
    "external_pid_file",
    "log_directory",
    "unix_socket_directories",
]
REQUIRED_FUNCTIONS = [
    "pg_show_all_settings",
    "pg_show_all_file_settings",
    "pg_hba_file_rules",
    "pg_ident_file_mappings",
    "table_to_xml",
    "table_to_xmlschema",
    "table_to_xml_and_xmlschema",
    "schema_to_xml",
    "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xmlschema",
    "database_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "setseed",
    "pg_stat_statements_reset",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_drop_replication_slot",
    "pg_replication_slot_advance",
    "pg_copy_physical_replication_slot",
    "pg_copy_logical_replication_slot",
    "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_logical_emit_message",
    "pg_wal_replay_pause",
    "pg_wal_replay_resume",
]


def _entry_id(entry: sqlguard.Refusal) -> str:
    """The entry's name, marked as a call for functions (a view and its function share one)."""
    if entry.kind == "function":
        return f"{entry.name}()"
    if entry.kind == "function_prefix":
        return f"{entry.name}*()"
    if entry.kind == "setting_substring":
        return f"*{entry.name}*"
    return entry.name


def _select_using(entry: sqlguard.Refusal) -> str:
    """A SELECT that refers to a relation entry or reads a setting entry."""
    if entry.kind == "relation":
        return f"SELECT * FROM {entry.name}"  # noqa: S608 - a parse tree for the guard, never run
    if entry.kind == "setting":
        return f"SELECT current_setting('{entry.name}')"
    return f"SELECT current_setting('myext.{entry.name}', true)"


def _refusal(check: Any, sql: str, **options: Any) -> str:
    """The message with which ``check(sql, **options)`` refuses ``sql``."""
    with pytest.raises(Refused) as caught:
        check(sql, **options)
    return str(caught.value)


def _assert_names_entry(entry: sqlguard.Refusal, message: str) -> None:
    """``message`` is one sentence that names ``entry`` and gives its reason."""
    assert message.startswith("refused: ")
    assert "\n" not in message
    assert entry.name in message
    if entry.kind == "function_prefix":
        # The example may call a listed member of the family; any other member has the
        # family's reason.
        assert sqlguard.refused_function_reason(f"{entry.name}guard_future") == entry.reason
    else:
        assert entry.reason in message


@pytest.mark.parametrize("entry", sqlguard.REFUSALS, ids=_entry_id)
def test_every_refusal_refuses_its_example_by_name(entry: sqlguard.Refusal) -> None:
    _assert_names_entry(entry, _refusal(sqlguard.check_read, entry.example))
    _assert_names_entry(entry, _refusal(sqlguard.check_write, entry.example))
    if entry.kind in ("relation", "setting", "setting_substring"):
        select = _select_using(entry)
        insert = f"INSERT INTO guard_t (note) {select}"
        _assert_names_entry(entry, _refusal(sqlguard.check_write, insert))
        for analyze in (False, True):
            message = _refusal(sqlguard.check_explain, select, analyze=analyze, allow_writes=True)
            _assert_names_entry(entry, message)


def test_the_refusal_table_is_well_formed() -> None:
    seen: set[tuple[str, str]] = set()
    for entry in sqlguard.REFUSALS:
        assert (entry.kind, entry.name) not in seen, entry
        seen.add((entry.kind, entry.name))
        assert entry.name == entry.name.strip().lower(), entry
        assert entry.reason, entry
        assert entry.reason == entry.reason.strip()
        assert not entry.reason.endswith("."), entry
        assert len(parse_sql(entry.example)) == 1, entry
    kinds = {entry.kind for entry in sqlguard.REFUSALS}
    assert kinds == {"function", "function_prefix", "relation", "setting", "setting_substring"}


def test_the_lookups_are_derived_from_the_table() -> None:
    def names(kind: str) -> set[str]:
        return {entry.name for entry in sqlguard.REFUSALS if entry.kind == kind}

    assert names("function") == sqlguard.REFUSED_FUNCTIONS
    assert set(sqlguard.REFUSED_FUNCTION_PREFIXES) == names("function_prefix")
    assert set(sqlguard.REFUSED_RELATIONS) == names("relation")
    assert set(sqlguard.REFUSED_SETTINGS) == names("setting")
    for entry in sqlguard.REFUSALS:
        if entry.kind == "function":
            assert sqlguard.refused_function_reason(entry.name) == entry.reason
        elif entry.kind == "relation":
            assert sqlguard.refused_relation_reason(entry.name) == entry.reason
        elif entry.kind == "setting":
            assert sqlguard.refused_setting_reason(entry.name) == entry.reason


def test_the_table_keeps_every_previous_entry_and_has_the_required_ones() -> None:
    assert set(PREVIOUS_FUNCTIONS) <= sqlguard.REFUSED_FUNCTIONS
    assert set(PREVIOUS_PREFIXES) <= set(sqlguard.REFUSED_FUNCTION_PREFIXES)
    assert set(REQUIRED_FUNCTIONS) <= sqlguard.REFUSED_FUNCTIONS
    assert {"pg_stat_reset", "pg_replication_origin_", "pg_logical_slot_"} <= set(
        sqlguard.REFUSED_FUNCTION_PREFIXES
    )
    assert set(REQUIRED_RELATIONS) <= set(sqlguard.REFUSED_RELATIONS)
    assert set(REQUIRED_SETTINGS) <= set(sqlguard.REFUSED_SETTINGS)
    for name in ("password", "passphrase", "secret"):
        assert sqlguard.refused_setting_reason(f"myext.{name}") is not None, name


def test_the_public_names_are_importable() -> None:
    for name in sqlguard.__all__:
        assert getattr(sqlguard, name) is not None, name
    for name in ("Refused", "check_read", "check_write", "check_explain"):
        assert name in sqlguard.__all__


def test_relation_names_match_in_any_schema_and_case() -> None:
    for name in ("pg_authid", "PG_AUTHID", "pg_catalog.pg_authid", "public.pg_stats"):
        assert sqlguard.refused_relation_reason(name) is not None, name
    for name in ("pg_roles", "pg_user", "pg_stat_activity", "pg_stats_copy", "pg_class"):
        assert sqlguard.refused_relation_reason(name) is None, name
    # A user's own table that shares a refused name is refused too (accepted, documented).
    with pytest.raises(Refused, match="pg_stats shows"):
        sqlguard.check_read("SELECT * FROM public.pg_stats")


def test_setting_names_match_as_postgresql_compares_them() -> None:
    """Case-insensitively; extensions' settings (with a dot) by what their names contain."""
    refused = [
        "primary_conninfo",
        "PRIMARY_CONNINFO",
        " primary_conninfo ",
        "Archive_Command",
        "myext.password",
        "MyExt.DB_Password",
        "app.settings.jwt_secret",
        "vault.passphrase",
        "citus.node_conninfo",
        "myext.api_key",
        "myext.token",
    ]
    for name in refused:
        assert sqlguard.refused_setting_reason(name) is not None, name
    allowed = [
        "work_mem",
        "primary_slot_name",
        "password_encryption",
        "ssl_passphrase_command_supports_reload",
        "max_index_keys",
        "dynamic_library_path",
        "myext.enabled",
        "all",
    ]
    for name in allowed:
        assert sqlguard.refused_setting_reason(name) is None, name


def test_current_setting_of_a_parameter_is_refused() -> None:
    reason = "current_setting() of anything but a string constant"
    assert reason in _refusal(sqlguard.check_read, "SELECT current_setting(%s)", has_params=True)
    assert reason in _refusal(
        sqlguard.check_read, "SELECT current_setting(%(name)s, true)", has_params=True
    )
    assert reason in _refusal(sqlguard.check_read, "SELECT current_setting($1)")
    assert reason in _refusal(
        sqlguard.check_write, "INSERT INTO t (note) SELECT current_setting(%s)", has_params=True
    )
    assert reason in _refusal(
        sqlguard.check_explain, "SELECT current_setting(%s::text)", has_params=True
    )
    # A parameter elsewhere is fine.
    sql = "SELECT current_setting('work_mem') = %s AS same"
    assert sqlguard.check_read(sql, has_params=True).is_read


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("INSERT INTO t (note) SELECT rolpassword FROM pg_authid", "pg_authid holds"),
        ("UPDATE t SET note = a.rolpassword FROM pg_authid a WHERE a.oid = t.id", "pg_authid"),
        ("DELETE FROM t USING pg_shadow s WHERE s.passwd LIKE 'S%'", "pg_shadow shows"),
        (
            "MERGE INTO t USING pg_authid a ON t.id = a.oid "
            "WHEN NOT MATCHED THEN INSERT (id) VALUES (1)",
            "pg_authid holds",
        ),
        ("CREATE TABLE stolen AS SELECT * FROM pg_authid", "pg_authid holds"),
        ("CREATE VIEW stolen AS SELECT rolpassword FROM pg_authid", "pg_authid holds"),
        ("CREATE MATERIALIZED VIEW stolen AS TABLE pg_statistic", "pg_statistic holds"),
        (
            "CREATE FUNCTION stolen() RETURNS text LANGUAGE sql "
            "BEGIN ATOMIC SELECT rolpassword FROM pg_authid LIMIT 1; END",
            "pg_authid holds",
        ),
        ("GRANT SELECT ON pg_catalog.pg_authid TO PUBLIC", "pg_authid holds"),
        ("COPY pg_authid TO STDOUT", "pg_authid holds"),
        (
            "WITH s AS (SELECT current_setting('primary_conninfo') AS v) "
            "INSERT INTO t (note) SELECT v FROM s",
            "the setting primary_conninfo",
        ),
        ("INSERT INTO t (note) VALUES (current_setting('archive_command'))", "archive_command"),
        ("UPDATE t SET note = current_setting(note)", "current_setting() of anything but"),
        ("INSERT INTO t (note) SELECT setting FROM pg_settings", "pg_settings shows"),
        ("ALTER SYSTEM SET primary_conninfo = 'host=evil'", "ALTER SYSTEM changes the server's"),
        ("ALTER SYSTEM RESET ALL", "which is the operator's job"),
        ("SELECT pg_switch_wal()", "pg_switch_wal() switches to a new WAL file"),
        ("SELECT pg_create_physical_replication_slot('s')", "replication slot, which a rollback"),
        ("SELECT pg_logical_emit_message(false, 'p', 'x')", "pg_logical_emit_message()"),
        ("SELECT pg_stat_statements_reset()", "pg_stat_statements_reset() discards"),
    ],
)
def test_check_write_refuses_secrets_and_what_a_rollback_does_not_undo(
    sql: str, reason: str
) -> None:
    assert reason in _refusal(sqlguard.check_write, sql)


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO t (note) SELECT current_setting('work_mem')",
        "INSERT INTO t (note) SELECT rolname FROM pg_roles",
        "CREATE TABLE my_stats (pg_authid text)",
        "UPDATE t SET note = 'pg_authid'",
    ],
)
def test_check_write_lets_ordinary_uses_of_catalogs_and_settings_through(sql: str) -> None:
    assert sqlguard.check_write(sql).statement_count == 1


def test_check_explain_refuses_secrets_even_without_analyze() -> None:
    probe = "SELECT 1 FROM pg_authid WHERE rolpassword LIKE 'SCRAM-SHA-256$4096:a%'"
    for analyze in (False, True):
        message = _refusal(sqlguard.check_explain, probe, analyze=analyze)
        assert message == "refused: pg_authid holds every role's password verifier"
    assert "SHOW ALL" in _refusal(sqlguard.check_explain, "SHOW ALL")
    assert "primary_conninfo" in _refusal(
        sqlguard.check_explain, "SELECT current_setting('primary_conninfo')"
    )
    assert sqlguard.check_explain("SELECT * FROM pg_roles", analyze=True) == "read"


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
    # The pooled connections were never touched: still usable, and still in the read-only
    # mode every assistant read session starts in.
    result = queries.read_query("local", "SHOW default_transaction_read_only")
    assert result.rows == [{"default_transaction_read_only": "on"}]


@pytest.mark.django_db(transaction=True)
def test_allowed_reads_run_through_read_query(guarded: LocalPostgresCluster) -> None:
    before = fingerprint(guarded)
    for sql, params in ALLOWED_READS:
        result = queries.read_query("local", sql, params)
        assert result.row_count >= 1, sql
    # Planning a write passes the guard (it only plans), but PostgreSQL plans a DELETE only
    # for a role that may run it, and the assistant's read role may not.
    with pytest.raises(routing.QueryError) as caught:
        queries.read_query("local", "EXPLAIN DELETE FROM guard_t")
    assert caught.value.sqlstate == "42501"
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
