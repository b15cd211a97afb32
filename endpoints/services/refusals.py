"""The names the SQL guard refuses wherever they appear in a statement, each with why.

Contract: :data:`REFUSALS` is the one table (kind, name, reason, example) of functions, function
families, relations and settings that an assistant's SQL may not use; every other lookup here
(:data:`REFUSED_FUNCTIONS`, :data:`REFUSED_RELATIONS`...) and the ``refused_*_reason``
functions are derived from it, so adding an entry is adding one line to the table. Names are
lower case and matched whatever the schema and the case. The checks that walk a statement
and raise :class:`endpoints.services.sqlguard.Refused` are :mod:`endpoints.services.sqlguard`;
the tests run every entry's ``example`` against the guard and against a real server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

RefusalKind = Literal["function", "function_prefix", "relation", "setting", "setting_substring"]


@dataclass(frozen=True, slots=True)
class Refusal:
    """One name the guard refuses wherever it appears in a statement, and why.

    ``kind`` says where ``name`` (lower case) is matched, whatever the schema and the case:

    ``"function"``
        a call ``name(...)``, or attribute notation ``x.name`` (which PostgreSQL reads as
        ``name(x)``);
    ``"function_prefix"``
        a call of any function whose name starts with ``name`` (calls only: ordinary columns
        are called ``lo_something``);
    ``"relation"``
        a table reference: ``FROM``, ``JOIN``, ``TABLE name``, subqueries, CTEs, the target
        or ``FROM`` of a write;
    ``"setting"``
        ``SHOW name`` or ``current_setting('name')``;
    ``"setting_substring"``
        the same for an extension's setting (its name has a dot: ``myext.password``) whose name
        contains ``name``.

    ``reason`` completes "refused: <name> ..." in one sentence. ``example`` is one statement
    that uses the entry: the tests check that the guard refuses it and the server accepts it.
    """

    kind: RefusalKind
    name: str
    reason: str
    example: str


def _entries(kind: RefusalKind, reason: str, examples: dict[str, str]) -> tuple[Refusal, ...]:
    """Entries of one kind that share a reason, from each name's example."""
    return tuple(Refusal(kind, name, reason, example) for name, example in examples.items())


_FILES = "reads files on the database server"
_FILE_METADATA = "reads file metadata on the database server"
_DIRECTORIES = "lists directories on the database server"
_WRITES_FILES = "writes files on the database server"
_LARGE_OBJECTS = "uses large objects, which read and write data outside tables"
_REMOTE = "connects to another server"
_SESSION = "which would outlive the request on a pooled connection"
_HIDDEN_SQL = "runs SQL passed as a string, which cannot be checked"
_EXPORTS_TABLES = (
    "exports every row of the tables a name or a string designates, which cannot be checked "
    "(table_to_xml('pg_authid', ...) returns password verifiers)"
)
_EXPORTS_CURSOR = "exports the rows of a cursor, whose query cannot be checked"
_NOT_UNDONE = "which a rollback does not undo"
_VERIFIERS = "pg_authid's password verifiers included"
_SAMPLES = f"sampled values of every table's columns, {_VERIFIERS}"
_EXTENDED_SAMPLES = "sampled values of extended statistics, outside table privileges"
_COMMAND = "is a shell command the server runs, which may hold credentials"
_SERVER_FILE = "names a file or directory on the database server"
_TELLING_NAME = "may hold a secret: its name contains"

# Every name the guard refuses, with why. The lookups below are derived from this table only.
REFUSALS: tuple[Refusal, ...] = (
    # Server files and directories (adminpack's pg_file_* and pg_logdir_ls: current and legacy
    # names).
    *_entries(
        "function",
        _FILES,
        {
            "pg_read_file": "SELECT pg_read_file('postgresql.conf')",
            "pg_read_binary_file": "SELECT pg_read_binary_file('postgresql.conf')",
            "pg_file_read": "SELECT pg_file_read('postgresql.conf', 0, 9)",
        },
    ),
    *_entries(
        "function",
        _FILE_METADATA,
        {
            "pg_stat_file": "SELECT pg_stat_file('postgresql.conf')",
            "pg_file_length": "SELECT pg_file_length('postgresql.conf')",
        },
    ),
    *_entries(
        "function",
        _DIRECTORIES,
        {
            "pg_ls_dir": "SELECT * FROM pg_ls_dir('.')",
            "pg_ls_logdir": "SELECT * FROM pg_ls_logdir()",
            "pg_ls_waldir": "SELECT * FROM pg_ls_waldir()",
            "pg_ls_tmpdir": "SELECT * FROM pg_ls_tmpdir()",
            "pg_ls_archive_statusdir": "SELECT * FROM pg_ls_archive_statusdir()",
            "pg_ls_logicalsnapdir": "SELECT * FROM pg_ls_logicalsnapdir()",
            "pg_ls_logicalmapdir": "SELECT * FROM pg_ls_logicalmapdir()",
            "pg_ls_replslotdir": "SELECT * FROM pg_ls_replslotdir('guard')",
            "pg_logdir_ls": "SELECT * FROM pg_logdir_ls() AS t(modified timestamp, name text)",
        },
    ),
    Refusal("function_prefix", "pg_ls_", _DIRECTORIES, "SELECT * FROM pg_ls_waldir()"),
    *_entries(
        "function",
        _WRITES_FILES,
        {
            "pg_file_write": "SELECT pg_file_write('guard', 'x', false)",
            "pg_file_rename": "SELECT pg_file_rename('guard', 'guard_renamed')",
            "pg_file_unlink": "SELECT pg_file_unlink('guard')",
            "pg_file_sync": "SELECT pg_file_sync('guard')",
        },
    ),
    Refusal(
        "function_prefix",
        "pg_file_",
        "accesses files on the database server",
        "SELECT pg_file_unlink('guard')",
    ),
    # Large objects: server files, and data outside table privileges.
    Refusal(
        "function",
        "lo_import",
        "reads a file on the database server into a large object",
        "SELECT lo_import('/etc/passwd')",
    ),
    Refusal(
        "function",
        "lo_export",
        "writes a large object to a file on the database server",
        "SELECT lo_export(lo_from_bytea(0, 'x'), '/tmp/guard_lo')",
    ),
    # 393216 opens for reading and writing (reading alone would not see the new object).
    *_entries(
        "function",
        _LARGE_OBJECTS,
        {
            "lo_close": "SELECT lo_close(lo_open(lo_create(0), 393216))",
            "lo_creat": "SELECT lo_creat(-1)",
            "lo_create": "SELECT lo_create(0)",
            "lo_from_bytea": "SELECT lo_from_bytea(0, 'x')",
            "lo_get": "SELECT lo_get(oid) FROM pg_largeobject_metadata",
            "lo_lseek": "SELECT lo_lseek(lo_open(lo_create(0), 393216), 0, 0)",
            "lo_lseek64": "SELECT lo_lseek64(lo_open(lo_create(0), 393216), 0, 0)",
            "lo_open": "SELECT lo_open(lo_create(0), 393216)",
            "lo_put": "SELECT lo_put(lo_create(0), 0, 'x')",
            "lo_tell": "SELECT lo_tell(lo_open(lo_create(0), 393216))",
            "lo_tell64": "SELECT lo_tell64(lo_open(lo_create(0), 393216))",
            "lo_truncate": "SELECT lo_truncate(lo_open(lo_create(0), 393216), 0)",
            "lo_truncate64": "SELECT lo_truncate64(lo_open(lo_create(0), 393216), 0)",
            "lo_unlink": "SELECT lo_unlink(lo_create(0))",
            "loread": "SELECT loread(lo_open(lo_create(0), 393216), 1)",
            "lowrite": "SELECT lowrite(lo_open(lo_create(0), 393216), 'x')",
        },
    ),
    Refusal("function_prefix", "lo_", _LARGE_OBJECTS, "SELECT lo_create(0)"),
    # dblink: other servers.
    *_entries(
        "function",
        _REMOTE,
        {
            "dblink": "SELECT * FROM dblink('dbname=app', 'SELECT 1') AS t(a int)",
            "dblink_connect": "SELECT dblink_connect('dbname=app')",
            "dblink_connect_u": "SELECT dblink_connect_u('dbname=app')",
            "dblink_exec": "SELECT dblink_exec('dbname=app', 'SELECT 1')",
            "dblink_open": "SELECT dblink_open('guard', 'SELECT 1')",
            "dblink_fetch": "SELECT * FROM dblink_fetch('guard', 1) AS t(a int)",
            "dblink_send_query": "SELECT dblink_send_query('guard', 'SELECT 1')",
            "dblink_get_result": "SELECT * FROM dblink_get_result('guard') AS t(a int)",
        },
    ),
    Refusal("function_prefix", "dblink_", _REMOTE, "SELECT dblink_disconnect()"),
    # Server control: other sessions, the server itself.
    Refusal(
        "function", "pg_terminate_backend", "ends another session", "SELECT pg_terminate_backend(0)"
    ),
    Refusal(
        "function",
        "pg_cancel_backend",
        "cancels another session's query",
        "SELECT pg_cancel_backend(0)",
    ),
    Refusal(
        "function",
        "pg_log_backend_memory_contexts",
        "signals another server process",
        "SELECT pg_log_backend_memory_contexts(0)",
    ),
    Refusal(
        "function", "pg_reload_conf", "reloads the server configuration", "SELECT pg_reload_conf()"
    ),
    *_entries(
        "function",
        "rotates the server log",
        {
            "pg_rotate_logfile": "SELECT pg_rotate_logfile()",
            "pg_rotate_logfile_old": "SELECT pg_rotate_logfile_old()",
        },
    ),
    Refusal("function", "pg_promote", "promotes a standby server", "SELECT pg_promote()"),
    *_entries(
        "function",
        f"pauses or resumes WAL replay on a standby, {_NOT_UNDONE}",
        {
            "pg_wal_replay_pause": "SELECT pg_wal_replay_pause()",
            "pg_wal_replay_resume": "SELECT pg_wal_replay_resume()",
        },
    ),
    # Session state.
    Refusal(
        "function",
        "set_config",
        f"changes settings, {_SESSION}",
        "SELECT set_config('work_mem', '64kB', true)",
    ),
    Refusal(
        "function", "setseed", f"seeds random() for the session, {_SESSION}", "SELECT setseed(0.5)"
    ),
    # These execute a query given as text, where nothing above can see what it calls:
    # query_to_xml('select pg_read_file(...)', ...) reads a file.
    *_entries(
        "function",
        _HIDDEN_SQL,
        {
            "query_to_xml": "SELECT query_to_xml('SELECT 1', true, false, '')",
            "query_to_xmlschema": "SELECT query_to_xmlschema('SELECT 1', true, false, '')",
            "query_to_xml_and_xmlschema": (
                "SELECT query_to_xml_and_xmlschema('SELECT 1', true, false, '')"
            ),
            "ts_stat": "SELECT * FROM ts_stat('SELECT to_tsvector(''a b'')')",
            "ts_rewrite": "SELECT ts_rewrite('a', 'SELECT ''a''::tsquery, ''b''::tsquery')",
        },
    ),
    # These run a SELECT over the tables that a name or a string designates, so the relation
    # refusals below never see which.
    *_entries(
        "function",
        _EXPORTS_TABLES,
        {
            "table_to_xml": "SELECT table_to_xml('pg_authid', true, false, '')",
            "table_to_xmlschema": "SELECT table_to_xmlschema('pg_authid', true, false, '')",
            "table_to_xml_and_xmlschema": (
                "SELECT table_to_xml_and_xmlschema('pg_authid', true, false, '')"
            ),
            "schema_to_xml": "SELECT schema_to_xml('public', true, false, '')",
            "schema_to_xmlschema": "SELECT schema_to_xmlschema('public', true, false, '')",
            "schema_to_xml_and_xmlschema": (
                "SELECT schema_to_xml_and_xmlschema('public', true, false, '')"
            ),
            "database_to_xml": "SELECT database_to_xml(true, false, '')",
            "database_to_xmlschema": "SELECT database_to_xmlschema(true, false, '')",
            "database_to_xml_and_xmlschema": (
                "SELECT database_to_xml_and_xmlschema(true, false, '')"
            ),
        },
    ),
    *_entries(
        "function",
        _EXPORTS_CURSOR,
        {
            "cursor_to_xml": "SELECT cursor_to_xml('guard', 1, false, true, '')",
            "cursor_to_xmlschema": "SELECT cursor_to_xmlschema('guard', false, true, '')",
        },
    ),
    # pageinspect: raw pages bypass table privileges and hold every row.
    Refusal(
        "function",
        "get_raw_page",
        f"returns a relation's raw pages, {_VERIFIERS}",
        "SELECT get_raw_page('pg_authid', 0)",
    ),
    # The functions behind the views of settings and configuration files refused below.
    Refusal(
        "function",
        "pg_show_all_settings",
        "returns every setting, secrets included (it backs pg_settings)",
        "SELECT * FROM pg_show_all_settings()",
    ),
    Refusal(
        "function",
        "pg_show_all_file_settings",
        "returns the server's configuration files, secrets included (it backs pg_file_settings)",
        "SELECT * FROM pg_show_all_file_settings()",
    ),
    Refusal(
        "function",
        "pg_hba_file_rules",
        "returns the server's pg_hba.conf (it backs pg_hba_file_rules)",
        "SELECT * FROM pg_hba_file_rules()",
    ),
    Refusal(
        "function",
        "pg_ident_file_mappings",
        "returns the server's pg_ident.conf (it backs pg_ident_file_mappings)",
        "SELECT * FROM pg_ident_file_mappings()",
    ),
    # Effects that a rollback does not undo: reads and EXPLAIN ANALYZE of writes rely on
    # rolling back. (pg_stat_clear_snapshot only drops this transaction's statistics cache.)
    Refusal(
        "function",
        "pg_stat_statements_reset",
        f"discards query statistics, {_NOT_UNDONE}",
        "SELECT pg_stat_statements_reset()",
    ),
    Refusal(
        "function_prefix",
        "pg_stat_reset",
        f"resets statistics, {_NOT_UNDONE}",
        "SELECT pg_stat_reset_shared('bgwriter')",
    ),
    Refusal(
        "function",
        "pg_switch_wal",
        f"switches to a new WAL file, {_NOT_UNDONE}",
        "SELECT pg_switch_wal()",
    ),
    Refusal(
        "function",
        "pg_create_restore_point",
        f"writes a restore point to the WAL, {_NOT_UNDONE}",
        "SELECT pg_create_restore_point('guard')",
    ),
    # pg_start_backup and pg_stop_backup: their names before PostgreSQL 15.
    *_entries(
        "function",
        f"starts or stops a backup, {_NOT_UNDONE}",
        {
            "pg_backup_start": "SELECT pg_backup_start('guard')",
            "pg_backup_stop": "SELECT * FROM pg_backup_stop()",
            "pg_start_backup": "SELECT pg_start_backup('guard')",
            "pg_stop_backup": "SELECT pg_stop_backup()",
        },
    ),
    *_entries(
        "function",
        f"creates, moves or drops a replication slot, {_NOT_UNDONE}",
        {
            "pg_create_physical_replication_slot": (
                "SELECT pg_create_physical_replication_slot('guard')"
            ),
            "pg_create_logical_replication_slot": (
                "SELECT pg_create_logical_replication_slot('guard', 'test_decoding')"
            ),
            "pg_copy_physical_replication_slot": (
                "SELECT pg_copy_physical_replication_slot('guard', 'guard_copy')"
            ),
            "pg_copy_logical_replication_slot": (
                "SELECT pg_copy_logical_replication_slot('guard', 'guard_copy')"
            ),
            "pg_drop_replication_slot": "SELECT pg_drop_replication_slot('guard')",
            "pg_replication_slot_advance": "SELECT pg_replication_slot_advance('guard', '0/0')",
        },
    ),
    Refusal(
        "function_prefix",
        "pg_replication_origin_",
        "uses replication origins, whose changes a rollback does not undo",
        "SELECT pg_replication_origin_create('guard')",
    ),
    Refusal(
        "function_prefix",
        "pg_logical_slot_",
        f"decodes a logical replication slot's changes and consumes them (get), {_NOT_UNDONE}",
        "SELECT * FROM pg_logical_slot_get_changes('guard', NULL, NULL)",
    ),
    Refusal(
        "function",
        "pg_logical_emit_message",
        f"writes a message to the WAL, {_NOT_UNDONE} when it is not transactional",
        "SELECT pg_logical_emit_message(false, 'guard', 'x')",
    ),
    # Relations that hold secrets. Matched on the unqualified name in any schema, so a user's
    # own table that happens to share one of these names is refused too: acceptable, and it
    # also catches pg_catalog.pg_authid, "PG_AUTHID" and a search_path that puts pg_catalog
    # later.
    Refusal(
        "relation",
        "pg_authid",
        "holds every role's password verifier",
        "SELECT rolname, rolpassword FROM pg_authid",
    ),
    Refusal(
        "relation",
        "pg_shadow",
        "shows every role's password verifier",
        "SELECT usename, passwd FROM pg_shadow",
    ),
    Refusal(
        "relation",
        "pg_user_mapping",
        "holds user mappings' options, passwords for other servers included",
        "SELECT umoptions FROM pg_user_mapping",
    ),
    Refusal(
        "relation",
        "pg_user_mappings",
        "shows user mappings' options, passwords for other servers included",
        "SELECT srvname, umoptions FROM pg_user_mappings",
    ),
    Refusal(
        "relation",
        "pg_hba_file_rules",
        "shows the server's pg_hba.conf, which is the operator's business",
        "SELECT * FROM pg_hba_file_rules",
    ),
    Refusal(
        "relation",
        "pg_ident_file_mappings",
        "shows the server's pg_ident.conf, which is the operator's business",
        "SELECT * FROM pg_ident_file_mappings",
    ),
    Refusal(
        "relation",
        "pg_file_settings",
        "shows the server's configuration files, secrets such as primary_conninfo included",
        "SELECT name, setting FROM pg_file_settings",
    ),
    Refusal(
        "relation",
        "pg_settings",
        "shows every setting, secrets such as primary_conninfo included; use SHOW name or "
        "current_setting('name') for one setting",
        "SELECT name, setting FROM pg_settings",
    ),
    Refusal(
        "relation",
        "pg_statistic",
        f"holds {_SAMPLES}",
        "SELECT starelid, stavalues1::text FROM pg_statistic",
    ),
    Refusal(
        "relation",
        "pg_stats",
        f"shows {_SAMPLES}",
        "SELECT histogram_bounds::text FROM pg_stats WHERE tablename = 'pg_authid'",
    ),
    Refusal(
        "relation",
        "pg_statistic_ext_data",
        f"holds {_EXTENDED_SAMPLES}",
        "SELECT * FROM pg_statistic_ext_data",
    ),
    *_entries(
        "relation",
        f"shows {_EXTENDED_SAMPLES}",
        {
            "pg_stats_ext": "SELECT * FROM pg_stats_ext",
            "pg_stats_ext_exprs": "SELECT * FROM pg_stats_ext_exprs",
        },
    ),
    Refusal(
        "relation",
        "pg_subscription",
        "holds subscriptions' connection strings (subconninfo), passwords included",
        "SELECT subname, subconninfo FROM pg_subscription",
    ),
    Refusal(
        "relation",
        "pg_largeobject",
        "holds large objects' data, outside table privileges",
        "SELECT loid, data FROM pg_largeobject",
    ),
    # Settings whose values hold secrets or name the server's files and commands. Built-in
    # settings are listed by name (primary_slot_name, password_encryption and
    # dynamic_library_path hold no secret); extensions' settings go by what their names say.
    Refusal(
        "setting",
        "primary_conninfo",
        "holds the standby's connection string, replication password included",
        "SHOW primary_conninfo",
    ),
    *_entries(
        "setting",
        _COMMAND,
        {
            "archive_command": "SHOW archive_command",
            "restore_command": "SHOW restore_command",
            "archive_cleanup_command": "SHOW archive_cleanup_command",
            "recovery_end_command": "SHOW recovery_end_command",
        },
    ),
    Refusal(
        "setting",
        "archive_library",
        "names the library that archives WAL, whose configuration may hold credentials",
        "SHOW archive_library",
    ),
    Refusal(
        "setting",
        "ssl_passphrase_command",
        "is the command that unlocks the server's TLS key",
        "SHOW ssl_passphrase_command",
    ),
    Refusal("setting", "ssl_key_file", "names the server's TLS private key", "SHOW ssl_key_file"),
    Refusal(
        "setting",
        "krb_server_keyfile",
        "names the server's Kerberos key",
        "SHOW krb_server_keyfile",
    ),
    *_entries(
        "setting",
        _SERVER_FILE,
        {
            "ssl_cert_file": "SHOW ssl_cert_file",
            "ssl_ca_file": "SHOW ssl_ca_file",
            "ssl_crl_file": "SHOW ssl_crl_file",
            "ssl_crl_dir": "SHOW ssl_crl_dir",
            "ssl_dh_params_file": "SHOW ssl_dh_params_file",
            "data_directory": "SHOW data_directory",
            "config_file": "SHOW config_file",
            "hba_file": "SHOW hba_file",
            "ident_file": "SHOW ident_file",
            "external_pid_file": "SHOW external_pid_file",
            "log_directory": "SHOW log_directory",
            "unix_socket_directories": "SHOW unix_socket_directories",
            "promote_trigger_file": "SHOW promote_trigger_file",
        },
    ),
    *(
        Refusal("setting_substring", part, f'{_TELLING_NAME} "{part}"', example)
        for part, example in {
            "password": "SELECT current_setting('myext.password', true)",
            "passphrase": "SELECT current_setting('myext.key_passphrase', true)",
            "secret": "SELECT current_setting('app.settings.jwt_secret', true)",
            "conninfo": "SELECT current_setting('citus.node_conninfo', true)",
            "key": "SELECT current_setting('myext.api_key', true)",
            "token": "SELECT current_setting('myext.token', true)",
        }.items()
    ),
)


def _lookup(kind: RefusalKind) -> dict[str, str]:
    """The reasons of the table's entries of one kind, by name."""
    return {entry.name: entry.reason for entry in REFUSALS if entry.kind == kind}


# Refused functions by exact name, with why.
REFUSED_FUNCTION_REASONS: dict[str, str] = _lookup("function")
REFUSED_FUNCTIONS: frozenset[str] = frozenset(REFUSED_FUNCTION_REASONS)
# Families refused by name prefix, for call syntax ``f(...)``.
REFUSED_FUNCTION_PREFIXES: dict[str, str] = _lookup("function_prefix")
REFUSED_RELATIONS: dict[str, str] = _lookup("relation")
REFUSED_SETTINGS: dict[str, str] = _lookup("setting")
# Extensions' settings refused by a part of their name, with why.
REFUSED_SETTING_SUBSTRINGS: dict[str, str] = _lookup("setting_substring")


def refused_function_reason(name: str) -> str | None:
    """Why calling ``name`` (any case, possibly schema-qualified) is refused, or None."""
    unqualified = name.rpartition(".")[2].lower()
    reason = REFUSED_FUNCTION_REASONS.get(unqualified)
    if reason is not None:
        return reason
    for prefix, family_reason in REFUSED_FUNCTION_PREFIXES.items():
        if unqualified.startswith(prefix):
            return family_reason
    return None


def refused_relation_reason(name: str) -> str | None:
    """Why referring to relation ``name`` (any case, possibly schema-qualified) is refused."""
    return REFUSED_RELATIONS.get(name.rpartition(".")[2].lower())


def refused_setting_reason(name: str) -> str | None:
    """Why reading setting ``name`` (any case, as SHOW or current_setting() takes it) is refused.

    PostgreSQL compares setting names case-insensitively; it does not trim spaces, but a name
    with spaces is refused as its trimmed self all the same (it would only fail anyway).
    """
    key = name.strip().lower()
    reason = REFUSED_SETTINGS.get(key)
    if reason is not None or "." not in key:
        # Every built-in setting is listed by name; only extensions' names have a dot.
        return reason
    for part, part_reason in REFUSED_SETTING_SUBSTRINGS.items():
        if part in key:
            return part_reason
    return None


__all__ = [
    "REFUSALS",
    "REFUSED_FUNCTIONS",
    "REFUSED_FUNCTION_PREFIXES",
    "REFUSED_FUNCTION_REASONS",
    "REFUSED_RELATIONS",
    "REFUSED_SETTINGS",
    "REFUSED_SETTING_SUBSTRINGS",
    "Refusal",
    "RefusalKind",
    "refused_function_reason",
    "refused_relation_reason",
    "refused_setting_reason",
]
