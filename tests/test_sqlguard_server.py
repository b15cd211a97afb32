"""endpoints.services.sqlguard's refusal table against a real PostgreSQL 15 server.

Every name in the table exists on the server (or in the contrib extension that defines it,
created in a transaction that is rolled back), every example is SQL the server accepts, and
what the guard refuses does leak secrets there, even to a role that only has
``pg_read_all_data``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from pglast.parser import parse_sql

from endpoints.devstack.localcluster import LocalPostgresCluster
from endpoints.services import sqlguard
from endpoints.services.sqlguard import Refusal, Refused

# Functions that contrib extensions define (the test server installs none of them). Their
# existence is checked with the extension created in a transaction that is rolled back.
EXTENSION_FUNCTIONS: dict[str, str] = {
    "pg_file_write": "adminpack",
    "pg_file_rename": "adminpack",
    "pg_file_unlink": "adminpack",
    "pg_file_sync": "adminpack",
    "pg_logdir_ls": "adminpack",
    "dblink": "dblink",
    "dblink_connect": "dblink",
    "dblink_connect_u": "dblink",
    "dblink_exec": "dblink",
    "dblink_open": "dblink",
    "dblink_fetch": "dblink",
    "dblink_send_query": "dblink",
    "dblink_get_result": "dblink",
    "pg_stat_statements_reset": "pg_stat_statements",
    "get_raw_page": "pageinspect",
}
# Families whose members all come from an extension.
EXTENSION_PREFIXES: dict[str, str] = {"pg_file_": "adminpack", "dblink_": "dblink"}

# Functions that neither PostgreSQL 15 nor its extensions define any more: refused for the
# older servers that still do.
LEGACY_FUNCTIONS: dict[str, str] = {
    "pg_file_read": "adminpack before 2.0 (PostgreSQL 11)",
    "pg_file_length": "adminpack before 2.0 (PostgreSQL 11)",
    "pg_start_backup": "renamed pg_backup_start in PostgreSQL 15",
    "pg_stop_backup": "renamed pg_backup_stop in PostgreSQL 15",
}

# Examples not run, only parsed: their effect outlives a rollback (server files, WAL, slots,
# statistics, server control, session state), or they need an extension or a legacy server.
SIDE_EFFECTS: frozenset[str] = frozenset(
    {
        "lo_export",
        "pg_reload_conf",
        "pg_rotate_logfile",
        "pg_rotate_logfile_old",
        "pg_promote",
        "pg_wal_replay_pause",
        "pg_wal_replay_resume",
        "setseed",
        "pg_stat_reset",
        "pg_switch_wal",
        "pg_create_restore_point",
        "pg_backup_start",
        "pg_backup_stop",
        "pg_create_physical_replication_slot",
        "pg_create_logical_replication_slot",
        "pg_copy_physical_replication_slot",
        "pg_copy_logical_replication_slot",
        "pg_drop_replication_slot",
        "pg_replication_slot_advance",
        "pg_replication_origin_",
        "pg_logical_slot_",
        "pg_logical_emit_message",
    }
)
NOT_RUN: frozenset[str] = (
    SIDE_EFFECTS
    | frozenset(EXTENSION_FUNCTIONS)
    | frozenset(EXTENSION_PREFIXES)
    | frozenset(LEGACY_FUNCTIONS)
)

# Examples that the server accepts but that fail on the test server's state, by SQLSTATE.
EXPECTED_ERRORS: dict[str, str] = {
    "pg_ls_logdir": "58P01",  # no log directory: the server logs to stderr
    "pg_ls_replslotdir": "42704",  # there is no slot called "guard"
    "cursor_to_xml": "34000",  # there is no cursor called "guard"
    "cursor_to_xmlschema": "34000",
}

# Built-in settings whose names contain a word of a setting_substring entry but whose values
# are no secret: the substring rules apply to extensions' settings only.
HARMLESS_SETTINGS: frozenset[str] = frozenset(
    {"password_encryption", "ssl_passphrase_command_supports_reload", "max_index_keys"}
)


def entries(*kinds: str) -> list[Refusal]:
    """The table's entries of these kinds."""
    return [entry for entry in sqlguard.REFUSALS if entry.kind in kinds]


def entry_id(entry: Refusal) -> str:
    """The entry's name, marked as a call for functions (a view and its function share one)."""
    return f"{entry.name}()" if entry.kind.startswith("function") else entry.name


@pytest.fixture
def superuser(pg_cluster: LocalPostgresCluster) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the primary as the cluster's superuser."""
    with psycopg.connect(**pg_cluster.conninfo("primary"), autocommit=True) as conn:
        yield conn


def catalog_functions(conn: psycopg.Connection[Any], *, core: bool) -> set[str]:
    """Names in pg_proc: of built-in functions only (``core``) or of every function."""
    query = "SELECT proname FROM pg_proc p"
    if core:
        query += (
            " WHERE NOT EXISTS (SELECT FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')"
        )
    return {row[0] for row in conn.execute(query)}


def test_every_function_entry_is_a_server_or_extension_function(
    superuser: psycopg.Connection[Any],
) -> None:
    with superuser.transaction(force_rollback=True):
        core = catalog_functions(superuser, core=True)
        for extension in sorted(set(EXTENSION_FUNCTIONS.values())):
            superuser.execute(f"CREATE EXTENSION IF NOT EXISTS {extension}")
        every = catalog_functions(superuser, core=False)
    for entry in entries("function"):
        if entry.name in LEGACY_FUNCTIONS:
            assert entry.name not in every, entry.name  # else the list is stale
        elif entry.name in EXTENSION_FUNCTIONS:
            assert entry.name not in core, entry.name
            assert entry.name in every, entry.name
        else:
            assert entry.name in core, entry.name
    for entry in entries("function_prefix"):
        names = every if entry.name in EXTENSION_PREFIXES else core
        assert any(name.startswith(entry.name) for name in names), entry.name


def test_every_relation_entry_is_a_pg_catalog_relation(
    superuser: psycopg.Connection[Any],
) -> None:
    rows = superuser.execute(
        "SELECT relname FROM pg_class WHERE relnamespace = 'pg_catalog'::regnamespace"
    )
    relations = {row[0] for row in rows}
    for entry in entries("relation"):
        assert entry.name in relations, entry.name


def test_every_setting_entry_is_a_server_setting(superuser: psycopg.Connection[Any]) -> None:
    settings = {row[0] for row in superuser.execute("SELECT name FROM pg_settings")}
    for entry in entries("setting"):
        assert entry.name in settings, entry.name
    # Built-in settings (no dot) are listed by name: each whose name looks secret is listed
    # or known harmless.
    words = [entry.name for entry in entries("setting_substring")]
    for name in sorted(settings):
        if "." not in name and any(word in name for word in words):
            assert name in sqlguard.REFUSED_SETTINGS or name in HARMLESS_SETTINGS, name


def test_the_exception_lists_name_table_entries() -> None:
    names = {entry.name for entry in sqlguard.REFUSALS}
    for listed in (NOT_RUN, EXPECTED_ERRORS, EXTENSION_PREFIXES):
        assert set(listed) <= names
    assert set(EXPECTED_ERRORS).isdisjoint(NOT_RUN)


@pytest.mark.parametrize("entry", sqlguard.REFUSALS, ids=entry_id)
def test_every_example_is_sql_the_server_accepts(
    superuser: psycopg.Connection[Any], entry: Refusal
) -> None:
    """Run as the superuser in a transaction that is rolled back, or parsed only (NOT_RUN)."""
    if entry.kind.startswith("function") and entry.name in NOT_RUN:
        assert len(parse_sql(entry.example)) == 1
        return
    expected = EXPECTED_ERRORS.get(entry.name) if entry.kind == "function" else None
    sqlstate = None
    with superuser.transaction(force_rollback=True):
        superuser.execute("SET LOCAL statement_timeout = '2s'")
        try:
            superuser.execute(entry.example).fetchall()
        except psycopg.Error as exc:
            sqlstate = exc.sqlstate
    assert sqlstate == expected, entry.example


def test_a_role_with_pg_read_all_data_reads_verifiers_that_the_guard_refuses(
    superuser: psycopg.Connection[Any],
) -> None:
    """The premise: SELECT on the catalogs leaks password verifiers to a least-privilege role."""
    leaks = [
        "SELECT rolpassword::text FROM pg_authid",
        "SELECT passwd::text FROM pg_shadow",
        "SELECT concat(most_common_vals, histogram_bounds) FROM pg_stats "
        "WHERE tablename = 'pg_authid' AND attname = 'rolpassword'",
        "SELECT table_to_xml('pg_authid', true, false, '')::text",
    ]
    with superuser.transaction(force_rollback=True):
        superuser.execute("SET LOCAL statement_timeout = '5s'")
        superuser.execute("ANALYZE pg_authid")
        superuser.execute("CREATE ROLE guard_reader NOLOGIN IN ROLE pg_read_all_data")
        superuser.execute("SET LOCAL ROLE guard_reader")
        for sql in leaks:
            values = [row[0] or "" for row in superuser.execute(sql)]
            assert any("SCRAM-SHA-256$" in value for value in values), sql
    for sql in leaks:
        with pytest.raises(Refused):
            sqlguard.check_read(sql)


def test_every_spelling_of_a_secret_setting_reads_it_and_is_refused(
    pg_cluster: LocalPostgresCluster,
) -> None:
    """On a standby, primary_conninfo holds the replication password, however it is asked."""
    spellings = [
        'SHOW "Primary_Conninfo"',
        "SELECT current_setting('PRIMARY_CONNINFO')",
        "SELECT current_setting('primary_conninfo', true)",
        "SELECT pg_catalog.current_setting(E'primary\\x5fconninfo')",
        "SELECT current_setting(U&'primary\\005fconninfo'::text)",
        "SELECT current_setting(upper('primary_conninfo'))",
        "SELECT x.current_setting FROM CAST('primary_conninfo' AS text) x",
        "SELECT setting FROM pg_settings WHERE name = 'primary_conninfo'",
        "SELECT setting FROM pg_show_all_settings() WHERE name = 'primary_conninfo'",
    ]
    replica = pg_cluster.replicas[0]
    with psycopg.connect(**pg_cluster.conninfo(replica), autocommit=True) as conn:
        secret = conn.execute("SHOW primary_conninfo").fetchone()
        assert secret is not None
        assert "password=" in secret[0]
        for sql in spellings:
            assert conn.execute(sql).fetchone() == secret, sql
    for sql in spellings:
        with pytest.raises(Refused):
            sqlguard.check_read(sql)
