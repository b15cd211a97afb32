"""Decide whether a SQL string may run on a hot-standby replica (a read) or needs the primary.

``classify(sql)`` parses the SQL with PostgreSQL's own parser (pglast) and walks the whole parse
tree, so nested subqueries, CTEs, lateral joins, set operations and expressions in any clause are
all seen. Comments and the contents of string literals (``'...'``, ``$$...$$``) are never
mistaken for SQL. The rule throughout: when in doubt, it is a write, because the primary runs
everything correctly while a replica refuses writes.

Reads (may go to a replica)
    * ``SELECT``, ``VALUES`` and ``TABLE t`` without a locking clause or ``INTO``;
    * ``SHOW``;
    * ``EXPLAIN`` without ``ANALYZE`` of any statement, since it plans but does not execute
      (except ``EXPLAIN EXECUTE``: the prepared statement lives in a primary session), and
      ``EXPLAIN ANALYZE`` of a read. ``ANALYZE`` counts as on unless it is spelled out as
      false (``EXPLAIN (ANALYZE false)``, ``off`` or ``0``);
    * ``COPY table TO STDOUT`` and ``COPY (query) TO STDOUT`` of a read query.

Writes (must go to the primary)
    * ``INSERT``, ``UPDATE``, ``DELETE``, ``MERGE``, wherever they appear: a data-modifying
      statement inside a ``WITH`` makes the whole statement a write, even nested and even when
      no one references that CTE (PostgreSQL runs it anyway);
    * ``SELECT ... FOR UPDATE / FOR NO KEY UPDATE / FOR SHARE / FOR KEY SHARE`` anywhere,
      including subqueries and CTEs: row locks write to the heap;
    * ``SELECT INTO`` and ``CREATE TABLE AS``;
    * all DDL and maintenance (``CREATE``, ``ALTER``, ``DROP``, ``TRUNCATE``, ``COMMENT``,
      ``GRANT``, ``REINDEX``, ``VACUUM``, ``ANALYZE``, ``CLUSTER``, ``REFRESH MATERIALIZED
      VIEW``...);
    * ``CALL`` and ``DO`` (procedural code may write);
    * ``COPY ... FROM``, and ``COPY ... TO`` a server file or a program;
    * ``LOCK``;
    * transaction control (``BEGIN``, ``START TRANSACTION``, ``COMMIT``, ``ROLLBACK``,
      ``SAVEPOINT``, ``PREPARE TRANSACTION``...) and session state (``SET``, ``RESET``,
      ``SET LOCAL``, ``SET TRANSACTION``, ``LISTEN``, ``NOTIFY``, ``UNLISTEN``, ``DECLARE``,
      ``FETCH``, ``CLOSE``, ``PREPARE``, ``EXECUTE``, ``DEALLOCATE``, ``DISCARD``): a pooler
      must keep these on the primary connection that the rest of the session uses;
    * a call, anywhere in the statement (even under ``EXPLAIN``), of a function in
      ``WRITE_FUNCTIONS`` or of a family in ``WRITE_FUNCTION_PREFIXES`` /
      ``WRITE_FUNCTION_SUFFIXES``: sequences (``nextval``, ``setval``, ``currval``,
      ``lastval``), advisory locks, transaction ids, ``pg_notify``, large objects (any
      ``lo_*``), ``set_config``, WAL, backup, replication-slot and server-control functions.
      Names match case-insensitively, whatever the schema (``pg_catalog.nextval``,
      ``NEXTVAL``);
    * any other statement type: nothing is a read unless listed as one above (default deny);
    * SQL that does not parse (``parse_error`` holds the parser's message; the primary will
      answer with the real error), that contains a NUL character (libpq would cut the string
      there, the parser too, and the two could disagree about what follows), or that is longer
      than ``MAX_CLASSIFIED_CHARS``.

Several statements in one string (``SELECT 1; DELETE FROM t``) are a write if any one is.
An empty or comment-only string has ``statement_count == 0`` and is a read with the reason
"no statement": it does nothing anywhere; callers refuse empty SQL themselves.

Strict mode (``classify(sql, strict=True)``) additionally makes a write of every call to a
function that is not known to be read-only: one not in ``READ_ONLY_FUNCTIONS`` (built-in
immutable and stable functions, from ``readonly_functions.txt``, plus a few volatile but
read-only ones such as ``random()`` and ``pg_sleep()``), or one qualified with a schema other
than ``pg_catalog`` (``public.lower(x)`` is a user's function). Constructs that are not
function calls in SQL (``CURRENT_TIMESTAMP``, ``COALESCE``, ``GREATEST``, ``CAST``...) are
reads in both modes.

What the classifier cannot see: functions called by views, triggers, rules, column defaults,
user-defined operators and casts, since it reads only the SQL text. A ``SELECT`` from a view
whose definition calls ``nextval()`` is classified as a read, and the replica rejects it.

``classify`` is cached (``functools.lru_cache``) on ``(sql, strict)``, so a repeated statement
costs a dictionary lookup; ``classify.cache_info()`` reports hits and misses and
``classify.cache_clear()`` empties the cache. Statements longer than ``CACHED_MAX_CHARS`` are
classified every time rather than pinned in memory.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pglast import ast
from pglast.enums import (
    LockClauseStrength,
    ObjectType,
    ReindexObjectType,
    TransactionStmtKind,
    VariableSetKind,
)
from pglast.parser import ParseError, parse_sql

Kind = Literal["read", "write"]

# Statements longer than this are not cached: 4096 entries of this size bound the cache's
# memory at 64 MiB, and a long statement costs far more to run than to parse again.
CACHED_MAX_CHARS = 16 * 1024
CACHE_SIZE = 4096

# Longer SQL is a write without parsing. pglast needs up to ~10 µs of CPU and ~180 bytes of
# stack per character (deeply nested SQL), so this bounds both at ~2.5 s and ~100 MiB.
MAX_CLASSIFIED_CHARS = 256 * 1024

# pglast turns the parse tree into Python objects with C recursion, one level per tree level.
# Left-deep chains such as ``1+1+1...`` parse without limit (about 2 characters a level) and a
# deep enough one overflows the C stack and kills the process. Measured worst case: about 180
# bytes of stack per character of SQL. SQL up to this length parses on the calling thread
# (at most ~750 KiB of stack); longer SQL on a helper thread sized for it.
_INLINE_PARSE_MAX_CHARS = 4096
_STACK_BYTES_PER_CHAR = 400
_MIN_HELPER_STACK_BYTES = 16 * 1024 * 1024
# threading.stack_size() is process-wide: hold this while changing it around a thread start.
_STACK_SIZE_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class Classification:
    """Where a SQL string may run, and why."""

    kind: Kind
    # One short sentence: why this kind, e.g. "INSERT modifies data".
    reason: str
    # Top-level statements; 0 for empty or comment-only SQL (and for SQL that did not parse).
    statement_count: int
    # Lower-case names of every function called anywhere: the unqualified name, plus
    # "schema.name" when the call is qualified.
    functions: frozenset[str] = field(default_factory=frozenset)
    # The parser's message when the SQL did not parse, else None.
    parse_error: str | None = None
    # Leaves state in the session that would outlive the statement on a pooled connection:
    # SET, RESET, LISTEN, PREPARE, cursors, transaction control, set_config(), session-level
    # advisory locks. The router discards such a connection rather than hand it on.
    session_state: bool = False
    # One SELECT (VALUES, TABLE, UNION...) that only reads: what DECLARE ... CURSOR FOR
    # accepts, so the router can run it as a cursor and fetch only the rows it needs.
    cursor_ok: bool = False
    # One statement PostgreSQL refuses inside a transaction block (VACUUM, CREATE INDEX
    # CONCURRENTLY, CREATE DATABASE, ALTER SYSTEM...): it must run on its own, in autocommit.
    outside_transaction: bool = False
    # Characters after the one statement's end: whitespace, comments and semicolons that a
    # caller embedding the statement in a larger one (as a subquery) must leave out.
    trailing_chars: int = 0

    @property
    def is_read(self) -> bool:
        return self.kind == "read"


# Functions that write, take locks or session state that only the primary session has, or fail
# on a standby. Matched on the unqualified, lower-cased name, whatever the schema.
WRITE_FUNCTIONS: frozenset[str] = frozenset(
    {
        # Sequences: nextval/setval write; currval/lastval read state of the session that
        # called nextval, which is on the primary.
        "nextval",
        "setval",
        "currval",
        "lastval",
        # Advisory locks coordinate with sessions on the primary (whole family: see prefixes).
        "pg_advisory_lock",
        "pg_advisory_lock_shared",
        "pg_advisory_xact_lock",
        "pg_advisory_xact_lock_shared",
        "pg_advisory_unlock",
        "pg_advisory_unlock_shared",
        "pg_advisory_unlock_all",
        "pg_try_advisory_lock",
        "pg_try_advisory_lock_shared",
        "pg_try_advisory_xact_lock",
        "pg_try_advisory_xact_lock_shared",
        # Assign a transaction id, which a standby cannot.
        "txid_current",
        "txid_current_if_assigned",
        "pg_current_xact_id",
        "pg_current_xact_id_if_assigned",
        # Notifications are delivered from the primary only.
        "pg_notify",
        # Large objects (every lo_* name is a write: see prefixes); lowrite has no underscore.
        "lo_create",
        "lo_creat",
        "lo_import",
        "lo_export",
        "lo_unlink",
        "lo_open",
        "lo_close",
        "lo_write",
        "lo_put",
        "lo_truncate",
        "lo_truncate64",
        "lo_from_bytea",
        "lowrite",
        # Session settings must stay with the session, on the primary.
        "set_config",
        # WAL and backup control, which fail during recovery (legacy names included).
        "pg_switch_wal",
        "pg_switch_xlog",
        "pg_create_restore_point",
        "pg_start_backup",
        "pg_stop_backup",
        "pg_backup_start",
        "pg_backup_stop",
        "pg_current_wal_lsn",
        "pg_current_wal_insert_lsn",
        "pg_current_wal_flush_lsn",
        "pg_current_xlog_location",
        "pg_current_xlog_insert_location",
        "pg_current_xlog_flush_location",
        "pg_walfile_name",
        "pg_walfile_name_offset",
        "pg_xlogfile_name",
        "pg_xlogfile_name_offset",
        "pg_log_standby_snapshot",
        # Replication slots and origins, logical decoding (see prefixes and suffixes too).
        "pg_create_physical_replication_slot",
        "pg_create_logical_replication_slot",
        "pg_copy_physical_replication_slot",
        "pg_copy_logical_replication_slot",
        "pg_drop_replication_slot",
        "pg_replication_slot_advance",
        "pg_logical_emit_message",
        "pg_sync_replication_slots",
        # Server control: acts on other sessions or on the server itself.
        "pg_terminate_backend",
        "pg_cancel_backend",
        "pg_reload_conf",
        "pg_rotate_logfile",
        "pg_promote",
        "pg_wal_replay_pause",
        "pg_wal_replay_resume",
        "pg_import_system_collations",
        "pg_nextoid",
        "pg_stop_making_pinned_objects",
        "pg_extension_config_dump",
        # Index maintenance writes the index.
        "brin_summarize_range",
        "brin_summarize_new_values",
        "brin_desummarize_range",
        "gin_clean_pending_list",
        # Statistics resets (whole family: see prefixes).
        "pg_stat_reset",
        "pg_stat_reset_shared",
        "pg_stat_reset_single_table_counters",
        "pg_stat_reset_single_function_counters",
        "pg_stat_reset_slru",
        "pg_stat_reset_replication_slot",
        "pg_stat_reset_subscription_stats",
        # Runs arbitrary SQL on another server, for its side effects.
        "dblink_exec",
        # adminpack: writes server files.
        "pg_file_write",
        "pg_file_rename",
        "pg_file_unlink",
        "pg_file_sync",
    }
)

# Families of write functions: any name starting with one of these is a write.
WRITE_FUNCTION_PREFIXES: tuple[str, ...] = (
    "lo_",
    "pg_advisory_",
    "pg_try_advisory_",
    "pg_stat_reset",
    "pg_replication_origin_",
    "pg_logical_slot_",
    "binary_upgrade_",
)

# Any name ending with one of these is a write: pg_create_*_replication_slot and friends.
WRITE_FUNCTION_SUFFIXES: tuple[str, ...] = ("_replication_slot",)

# Volatile built-ins that nonetheless only read: the catalog file lists immutable and stable
# functions only, and strict mode must not send these to the primary.
_VOLATILE_READ_ONLY_FUNCTIONS = frozenset(
    {
        "random",
        "clock_timestamp",
        "timeofday",
        "gen_random_uuid",
        "pg_sleep",
        "pg_sleep_for",
        "pg_sleep_until",
        "pg_is_in_recovery",
        "pg_last_wal_receive_lsn",
        "pg_last_wal_replay_lsn",
        "pg_last_xact_replay_timestamp",
        "pg_is_wal_replay_paused",
        "pg_get_wal_replay_pause_state",
        "pg_database_size",
        "pg_relation_size",
        "pg_table_size",
        "pg_indexes_size",
        "pg_total_relation_size",
        "pg_tablespace_size",
        "pg_sequence_last_value",
        "pg_lock_status",
        "pg_blocking_pids",
        "pg_safe_snapshot_blocking_pids",
        "pg_partition_tree",
        "pg_partition_ancestors",
        "pg_xact_commit_timestamp",
        "pg_xact_commit_timestamp_origin",
        "pg_last_committed_xact",
        "pg_control_checkpoint",
        "pg_control_init",
        "pg_control_recovery",
        "pg_control_system",
        "pg_current_logfile",
        "pg_jit_available",
        "pg_notification_queue_usage",
        "pg_get_backend_memory_contexts",
        "pg_get_shmem_allocations",
        "pg_hba_file_rules",
        "pg_ident_file_mappings",
        "pg_show_all_file_settings",
        "pg_prepared_xact",
        "current_query",
        "ts_rewrite",
        "ts_stat",
    }
)

# Read-only built-ins added after PostgreSQL 15, whose catalog generated the file. The parser
# (pglast 8 bundles PostgreSQL 18's) turns some SQL syntax into calls of them (SYSTEM_USER).
_NEWER_READ_ONLY_FUNCTIONS = frozenset(
    {
        "system_user",
        "any_value",
        "random_normal",
        "array_sample",
        "array_shuffle",
        "pg_input_is_valid",
        "pg_input_error_info",
        "date_add",
        "date_subtract",
        "to_bin",
        "to_oct",
        "uuid_extract_timestamp",
        "uuid_extract_version",
        "uuidv4",
        "uuidv7",
        "casefold",
        "array_reverse",
        "array_sort",
        "crc32",
        "crc32c",
    }
)


def is_write_function(name: str) -> bool:
    """Whether calling ``name`` (``"nextval"``, ``"pg_catalog.NEXTVAL"``...) makes SQL a write."""
    unqualified = name.rpartition(".")[2].lower()
    return (
        unqualified in WRITE_FUNCTIONS
        or unqualified.startswith(WRITE_FUNCTION_PREFIXES)
        or unqualified.endswith(WRITE_FUNCTION_SUFFIXES)
    )


def _load_catalog_read_only_functions() -> frozenset[str]:
    path = Path(__file__).with_name("readonly_functions.txt")
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return frozenset(line for line in lines if line and not line.startswith("#"))


READ_ONLY_FUNCTIONS: frozenset[str] = frozenset(
    name
    for name in _load_catalog_read_only_functions()
    | _VOLATILE_READ_ONLY_FUNCTIONS
    | _NEWER_READ_ONLY_FUNCTIONS
    if not is_write_function(name)
)


def is_known_read_only_call(name_parts: tuple[str, ...]) -> bool:
    """Whether a call of this (lower-case, possibly schema-qualified) name is read-only."""
    # A schema other than pg_catalog names a user's function that merely shares a built-in's
    # name. An unqualified name resolves to pg_catalog first (unless search_path says
    # otherwise explicitly, which this cannot see).
    if len(name_parts) > 1 and name_parts[-2] != "pg_catalog":
        return False
    return name_parts[-1] in READ_ONLY_FUNCTIONS


class _CachedClassifier:
    """The type of ``classify``: a function that also has lru_cache's cache controls."""

    __slots__ = ()

    def __call__(
        self, sql: str, *, strict: bool = False, client_placeholders: bool = False
    ) -> Classification:
        """Classify ``sql`` as a read or a write; never raises for bad SQL (that is a write).

        ``client_placeholders``: the SQL goes to psycopg with parameters, so its ``%s`` and
        ``%(name)s`` placeholders (not PostgreSQL syntax) are read as ``$n`` parameters.
        """
        if len(sql) > CACHED_MAX_CHARS:
            return _classify(to_server_placeholders(sql) if client_placeholders else sql, strict)
        return _classify_cached(sql, bool(strict), bool(client_placeholders))

    def cache_info(self) -> functools._CacheInfo:
        """Hits, misses and size of the cache."""
        return _classify_cached.cache_info()

    def cache_clear(self) -> None:
        _classify_cached.cache_clear()


@functools.lru_cache(maxsize=CACHE_SIZE)
def _classify_cached(sql: str, strict: bool, client_placeholders: bool) -> Classification:
    return _classify(to_server_placeholders(sql) if client_placeholders else sql, strict)


# psycopg's placeholders: %s, %b, %t, %(name)s..., and %% for a literal percent sign.
_CLIENT_PLACEHOLDER = re.compile(r"%(?:\((?P<name>[^)]*)\))?(?P<format>[sbt%])")


def to_server_placeholders(sql: str) -> str:
    """``%s``/``%(name)s`` as ``$1``, ``$2``...; ``%%`` as ``%``: what the parser understands.

    psycopg replaces placeholders wherever they are (it does not parse SQL), so this does too.
    """
    numbers: dict[str, int] = {}

    def replace(match: re.Match[str]) -> str:
        if match["format"] == "%":
            return "%"
        name = match["name"]
        key = f"name:{name}" if name is not None else f"position:{len(numbers)}"
        number = numbers.setdefault(key, len(numbers) + 1)
        return f"${number}"

    return _CLIENT_PLACEHOLDER.sub(replace, sql)


# classify(sql, *, strict=False) -> Classification, with classify.cache_info() and
# classify.cache_clear(). An instance rather than an lru_cache-wrapped function keeps the
# signature typed, gives classify(sql) and classify(sql, strict=False) one cache entry, and
# lets long SQL bypass the cache.
classify = _CachedClassifier()


def _write(reason: str, *, parse_error: str | None = None) -> Classification:
    return Classification("write", reason, 0, frozenset(), parse_error)


def _classify(sql: str, strict: bool) -> Classification:
    if "\x00" in sql:
        return _write("contains a NUL character", parse_error="SQL contains a NUL character")
    if len(sql) > MAX_CLASSIFIED_CHARS:
        return _write(f"too long to classify (over {MAX_CLASSIFIED_CHARS} characters)")
    try:
        raw_statements = _parse(sql)
    except ParseError as exc:
        return _write(f"could not parse: {exc}", parse_error=str(exc))
    except (UnicodeError, RecursionError, MemoryError, RuntimeError) as exc:
        # Lone surrogates cannot be encoded for the parser; the others are resource limits.
        message = f"{type(exc).__name__}: {exc}"
        return _write(f"could not parse: {message}", parse_error=message)

    functions: set[str] = set()
    verdicts: list[tuple[Kind, str]] = []
    for raw in raw_statements:
        if raw.stmt is None:  # not produced by the parser; default deny all the same
            verdicts.append(("write", "the parser returned an empty statement"))
            continue
        facts = _walk(raw.stmt)
        verdicts.append(_classify_statement(raw.stmt, facts, strict))
        for parts in facts.calls:
            functions.add(parts[-1])
            if len(parts) > 1:
                functions.add(f"{parts[-2]}.{parts[-1]}")

    count = len(verdicts)
    if count == 0:
        return Classification("read", "no statement", 0, frozenset(), None)
    session = any(isinstance(raw.stmt, _SESSION_CHANGING) for raw in raw_statements) or bool(
        functions & SESSION_FUNCTIONS
    )
    outside = count == 1 and _outside_transaction(raw_statements[0].stmt)
    for index, (kind, reason) in enumerate(verdicts, start=1):
        if kind == "write":
            if count > 1:
                reason = f"statement {index} of {count}: {reason}"
            return Classification(
                "write",
                reason,
                count,
                frozenset(functions),
                None,
                session,
                outside_transaction=outside,
            )
    reason = verdicts[0][1] if count == 1 else f"all {count} statements only read"
    cursor_ok = count == 1 and isinstance(raw_statements[0].stmt, ast.SelectStmt)
    return Classification(
        "read",
        reason,
        count,
        frozenset(functions),
        None,
        session,
        cursor_ok,
        trailing_chars=_trailing_chars(sql, raw_statements[0]) if count == 1 else 0,
    )


def _trailing_chars(sql: str, raw: ast.RawStmt) -> int:
    """How many characters of ``sql`` follow its only statement (``;``, comments, spaces)."""
    length = raw.stmt_len or 0
    if not length:
        return 0  # the statement runs to the end of the string (a comment at most follows)
    return max(0, len(sql) - (raw.stmt_location or 0) - length)


# Always refused inside a transaction block (PreventInTransactionBlock in PostgreSQL).
_OUTSIDE_TRANSACTION = (
    ast.CreatedbStmt,
    ast.DropdbStmt,
    ast.CreateTableSpaceStmt,
    ast.DropTableSpaceStmt,
    ast.AlterSystemStmt,
    ast.CreateSubscriptionStmt,
    ast.AlterSubscriptionStmt,
    ast.DropSubscriptionStmt,
)


def _outside_transaction(stmt: ast.Node | None) -> bool:
    """Whether PostgreSQL refuses ``stmt`` inside a transaction block.

    Erring towards yes costs little (the router then runs it in autocommit), so
    subscriptions count whatever their options.
    """
    if isinstance(stmt, _OUTSIDE_TRANSACTION):
        return True
    if isinstance(stmt, ast.VacuumStmt):
        return bool(stmt.is_vacuumcmd)  # VACUUM; ANALYZE alone runs anywhere
    if isinstance(stmt, ast.IndexStmt | ast.DropStmt):
        return bool(stmt.concurrent)
    if isinstance(stmt, ast.ReindexStmt):
        options = {str(option.defname).lower() for option in stmt.params or ()}
        return "concurrently" in options or stmt.kind in (
            ReindexObjectType.REINDEX_OBJECT_SCHEMA,
            ReindexObjectType.REINDEX_OBJECT_SYSTEM,
            ReindexObjectType.REINDEX_OBJECT_DATABASE,
        )
    if isinstance(stmt, ast.ClusterStmt):
        return stmt.relation is None  # CLUSTER of every table
    return False


def _parse(sql: str) -> tuple[ast.RawStmt, ...]:
    if len(sql) <= _INLINE_PARSE_MAX_CHARS:
        return parse_sql(sql)
    return _parse_on_large_stack(sql)


def _parse_on_large_stack(sql: str) -> tuple[ast.RawStmt, ...]:
    """``parse_sql`` on a helper thread whose stack fits the deepest tree ``sql`` can make."""
    results: list[tuple[ast.RawStmt, ...]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(parse_sql(sql))
        except BaseException as exc:  # re-raised on the calling thread below
            errors.append(exc)

    megabyte = 1024 * 1024
    wanted = max(_MIN_HELPER_STACK_BYTES, len(sql) * _STACK_BYTES_PER_CHAR)
    stack_bytes = -(-wanted // megabyte) * megabyte
    with _STACK_SIZE_LOCK:
        previous = threading.stack_size(stack_bytes)
        try:
            worker = threading.Thread(target=run, name="pgwarden-sql-parse", daemon=True)
            worker.start()
        finally:
            threading.stack_size(previous)
    worker.join()
    if errors:
        raise errors[0]
    return results[0]


@dataclass(slots=True)
class _TreeFacts:
    """What the walk found below (and including) one statement node."""

    # Every FuncCall's lower-case name parts, in source order, e.g. ("pg_catalog", "nextval").
    calls: list[tuple[str, ...]] = field(default_factory=list)
    # Data-modifying statements below the top node (writable CTEs, COPY (INSERT ...) TO).
    data_modifying: list[ast.Node] = field(default_factory=list)
    locking_strength: LockClauseStrength | None = None
    has_into: bool = False


_DATA_MODIFYING = (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)


# Node classes whose subtrees cannot hold a call, a statement or a locking clause: skipping
# them saves most of the walk over long lists of constants and column references.
_LEAF_CLASSES: tuple[type[ast.Node], ...] = (
    ast.A_Const,
    ast.String,
    ast.Integer,
    ast.Float,
    ast.Boolean,
    ast.BitString,
    ast.A_Star,
    ast.ParamRef,
    ast.ColumnRef,
    ast.RangeVar,
    ast.Alias,
)
# Per node class, the attributes that may hold nodes or tuples of nodes; filled as met.
CHILD_ATTRIBUTES: dict[type, tuple[str, ...]] = dict.fromkeys(_LEAF_CLASSES, ())


def child_attributes(cls: type) -> tuple[str, ...] | None:
    """The attributes of pglast node class ``cls`` that may hold nodes; None for a non-node.

    Cached per class in :data:`CHILD_ATTRIBUTES` (leaves have none), which a tree walk
    reads first: every walk of a parse tree (here and in the SQL guard) uses this.
    """
    attributes = CHILD_ATTRIBUTES.get(cls)
    if attributes is None:
        if not (isinstance(cls, type) and issubclass(cls, ast.Node)):
            return None
        attributes = CHILD_ATTRIBUTES[cls] = _child_attributes(cls)
    return attributes


def _child_attributes(cls: type[ast.Node]) -> tuple[str, ...]:
    slots = getattr(cls, "__slots__", ())
    names = []
    for name in slots:
        py_type = getattr(slots[name], "py_type", None) if isinstance(slots, dict) else None
        candidates = py_type if isinstance(py_type, tuple) else (py_type,)
        # Unknown slot metadata: keep the attribute, the walk checks values anyway.
        if py_type is None or any(
            candidate in (tuple, list)
            or (isinstance(candidate, type) and issubclass(candidate, ast.Node))
            for candidate in candidates
        ):
            names.append(name)
    return tuple(names)


def _walk(top: ast.Node) -> _TreeFacts:
    """Visit every node under ``top`` (depth first, source order) and note what matters."""
    facts = _TreeFacts()
    known = CHILD_ATTRIBUTES
    # An explicit stack, not recursion: SQL can nest deeper than Python's recursion limit.
    # Any: items are nodes, tuples or scalars, told apart by their exact class below.
    stack: list[Any] = [top]
    pop = stack.pop
    push = stack.append
    while stack:
        item = pop()
        cls = type(item)
        if cls is tuple:
            stack.extend(reversed(item))
            continue
        attributes = known.get(cls)
        if attributes is None:
            attributes = child_attributes(cls)
            if attributes is None:
                continue  # a scalar inside a tuple, such as a Bitmapset member
        if cls is ast.FuncCall:
            facts.calls.append(tuple((part.sval or "").lower() for part in item.funcname or ()))
        elif cls in _DATA_MODIFYING:
            if item is not top:
                facts.data_modifying.append(item)
        elif cls is ast.LockingClause:
            if facts.locking_strength is None:
                facts.locking_strength = item.strength
        elif cls is ast.IntoClause:
            facts.has_into = True
        for name in reversed(attributes):
            value = getattr(item, name)
            if value is not None:
                push(value)
    return facts


_LOCK_CLAUSES = {
    LockClauseStrength.LCS_FORKEYSHARE: "FOR KEY SHARE",
    LockClauseStrength.LCS_FORSHARE: "FOR SHARE",
    LockClauseStrength.LCS_FORNOKEYUPDATE: "FOR NO KEY UPDATE",
    LockClauseStrength.LCS_FORUPDATE: "FOR UPDATE",
}


def _classify_statement(stmt: ast.Node, facts: _TreeFacts, strict: bool) -> tuple[Kind, str]:
    """Kind and reason for one top-level statement."""
    if isinstance(stmt, ast.ExplainStmt):
        verdict = _classify_explain(stmt, facts, strict)
    elif isinstance(stmt, ast.CopyStmt):
        verdict = _classify_copy(stmt, facts)
    elif isinstance(stmt, ast.SelectStmt):
        verdict = _classify_select(stmt, facts)
    elif isinstance(stmt, ast.VariableShowStmt):
        verdict = ("read", "SHOW only reads a setting")
    else:
        return ("write", _write_statement_reason(stmt))
    if verdict[0] == "write":
        return verdict
    return _check_calls(facts.calls, strict) or verdict


def _classify_select(stmt: ast.SelectStmt, facts: _TreeFacts) -> tuple[Kind, str]:
    if facts.data_modifying:
        label = _statement_label(facts.data_modifying[0])
        return ("write", f"{label} in a WITH clause modifies data")
    if facts.locking_strength is not None:
        clause = _LOCK_CLAUSES.get(facts.locking_strength, "FOR UPDATE")
        return ("write", f"SELECT ... {clause} takes row locks")
    if facts.has_into:
        return ("write", "SELECT INTO creates a table")
    if stmt.valuesLists and not stmt.fromClause:
        return ("read", "VALUES only reads")
    return ("read", "SELECT only reads")


def _classify_copy(stmt: ast.CopyStmt, facts: _TreeFacts) -> tuple[Kind, str]:
    if stmt.is_from:
        return ("write", "COPY FROM loads data")
    if stmt.is_program or stmt.filename is not None:
        return ("write", "COPY TO a server file or program has side effects on the server")
    if isinstance(stmt.query, _DATA_MODIFYING):
        return ("write", f"COPY ({_statement_label(stmt.query)}) modifies data")
    if isinstance(stmt.query, ast.SelectStmt):
        kind, reason = _classify_select(stmt.query, facts)
        if kind == "write":
            return (kind, reason)
    return ("read", "COPY TO STDOUT only reads")


def _classify_explain(stmt: ast.ExplainStmt, facts: _TreeFacts, strict: bool) -> tuple[Kind, str]:
    query = stmt.query
    if isinstance(query, ast.ExecuteStmt):
        return ("write", "EXPLAIN EXECUTE needs the prepared statement of a primary session")
    if not _explain_analyzes(stmt):
        return ("read", "EXPLAIN without ANALYZE plans the statement but does not run it")
    if query is None:
        return ("write", "EXPLAIN ANALYZE of an unknown statement")
    kind, reason = _classify_statement(query, facts, strict)
    if kind == "write":
        return ("write", f"EXPLAIN ANALYZE runs the statement, and {reason}")
    return ("read", "EXPLAIN ANALYZE runs a statement that only reads")


def _explain_analyzes(stmt: ast.ExplainStmt) -> bool:
    """Whether EXPLAIN runs the statement: any ANALYZE option not spelled out as false."""
    for option in stmt.options or ():
        if (
            isinstance(option, ast.DefElem)
            and option.defname == "analyze"
            and not _option_is_false(option.arg)
        ):
            return True
    return False


def _option_is_false(arg: object) -> bool:
    # The values PostgreSQL's defGetBoolean() takes as false; an absent value means true.
    if isinstance(arg, ast.Integer):
        return arg.ival == 0
    if isinstance(arg, ast.Boolean):
        return not arg.boolval
    if isinstance(arg, ast.String):
        return (arg.sval or "").lower() in {"false", "off"}
    return False


def _check_calls(calls: Iterable[tuple[str, ...]], strict: bool) -> tuple[Kind, str] | None:
    """The write verdict for the first function call that makes the statement a write."""
    unknown: tuple[str, ...] | None = None
    for parts in calls:
        if not parts:
            continue
        if is_write_function(parts[-1]):
            return ("write", f"calls {'.'.join(parts)}(), which writes or needs the primary")
        if strict and unknown is None and not is_known_read_only_call(parts):
            unknown = parts
    if unknown is not None:
        name = ".".join(unknown)
        return ("write", f"calls {name}(), which is not known to be read-only (strict mode)")
    return None


_TRANSACTION_LABELS = {
    TransactionStmtKind.TRANS_STMT_BEGIN: "BEGIN",
    TransactionStmtKind.TRANS_STMT_START: "START TRANSACTION",
    TransactionStmtKind.TRANS_STMT_COMMIT: "COMMIT",
    TransactionStmtKind.TRANS_STMT_ROLLBACK: "ROLLBACK",
    TransactionStmtKind.TRANS_STMT_SAVEPOINT: "SAVEPOINT",
    TransactionStmtKind.TRANS_STMT_RELEASE: "RELEASE SAVEPOINT",
    TransactionStmtKind.TRANS_STMT_ROLLBACK_TO: "ROLLBACK TO SAVEPOINT",
    TransactionStmtKind.TRANS_STMT_PREPARE: "PREPARE TRANSACTION",
    TransactionStmtKind.TRANS_STMT_COMMIT_PREPARED: "COMMIT PREPARED",
    TransactionStmtKind.TRANS_STMT_ROLLBACK_PREPARED: "ROLLBACK PREPARED",
}

_STATEMENT_LABELS: dict[type[ast.Node], str] = {
    ast.InsertStmt: "INSERT",
    ast.UpdateStmt: "UPDATE",
    ast.DeleteStmt: "DELETE",
    ast.MergeStmt: "MERGE",
    ast.SelectStmt: "SELECT",
    ast.CreateStmt: "CREATE TABLE",
    ast.IndexStmt: "CREATE INDEX",
    ast.ViewStmt: "CREATE VIEW",
    ast.CreateSeqStmt: "CREATE SEQUENCE",
    ast.AlterSeqStmt: "ALTER SEQUENCE",
    ast.CreateSchemaStmt: "CREATE SCHEMA",
    ast.CreatedbStmt: "CREATE DATABASE",
    ast.DropdbStmt: "DROP DATABASE",
    ast.CreateTrigStmt: "CREATE TRIGGER",
    ast.RuleStmt: "CREATE RULE",
    ast.CreateExtensionStmt: "CREATE EXTENSION",
    ast.CreateRoleStmt: "CREATE ROLE",
    ast.AlterRoleStmt: "ALTER ROLE",
    ast.DropRoleStmt: "DROP ROLE",
    ast.AlterSystemStmt: "ALTER SYSTEM",
    ast.RenameStmt: "ALTER ... RENAME",
    ast.TruncateStmt: "TRUNCATE",
    ast.CommentStmt: "COMMENT",
    ast.SecLabelStmt: "SECURITY LABEL",
    ast.ClusterStmt: "CLUSTER",
    ast.ReindexStmt: "REINDEX",
    ast.RefreshMatViewStmt: "REFRESH MATERIALIZED VIEW",
    ast.CheckPointStmt: "CHECKPOINT",
    ast.LoadStmt: "LOAD",
    ast.LockStmt: "LOCK",
    ast.CallStmt: "CALL",
    ast.DoStmt: "DO",
    ast.ListenStmt: "LISTEN",
    ast.UnlistenStmt: "UNLISTEN",
    ast.NotifyStmt: "NOTIFY",
    ast.DeclareCursorStmt: "DECLARE",
    ast.ClosePortalStmt: "CLOSE",
    ast.PrepareStmt: "PREPARE",
    ast.ExecuteStmt: "EXECUTE",
    ast.DeallocateStmt: "DEALLOCATE",
    ast.DiscardStmt: "DISCARD",
    ast.ConstraintsSetStmt: "SET CONSTRAINTS",
    ast.CopyStmt: "COPY",
    ast.ExplainStmt: "EXPLAIN",
    ast.VariableShowStmt: "SHOW",
}

_OBJECT_TYPE_WORDS = {ObjectType.OBJECT_MATVIEW: "MATERIALIZED VIEW"}


def _object_type_words(object_type: ObjectType | None) -> str:
    if object_type is None:
        return ""
    return _OBJECT_TYPE_WORDS.get(
        object_type, object_type.name.removeprefix("OBJECT_").replace("_", " ")
    )


def _statement_label(stmt: ast.Node) -> str:
    """The SQL command a statement node stands for, e.g. "DROP TABLE"."""
    if isinstance(stmt, ast.TransactionStmt):
        if stmt.kind is None:
            return "transaction control"
        return _TRANSACTION_LABELS.get(stmt.kind, "transaction control")
    if isinstance(stmt, ast.VariableSetStmt):
        if stmt.kind in (VariableSetKind.VAR_RESET, VariableSetKind.VAR_RESET_ALL):
            return "RESET"
        if stmt.kind == VariableSetKind.VAR_SET_MULTI and stmt.name:
            return f"SET {stmt.name}"
        return "SET LOCAL" if stmt.is_local else "SET"
    if isinstance(stmt, ast.VacuumStmt):
        return "VACUUM" if stmt.is_vacuumcmd else "ANALYZE"
    if isinstance(stmt, ast.GrantStmt | ast.GrantRoleStmt):
        return "GRANT" if stmt.is_grant else "REVOKE"
    if isinstance(stmt, ast.FetchStmt):
        return "MOVE" if stmt.ismove else "FETCH"
    if isinstance(stmt, ast.CreateTableAsStmt):
        if stmt.is_select_into:
            return "SELECT INTO"
        if stmt.objtype == ObjectType.OBJECT_MATVIEW:
            return "CREATE MATERIALIZED VIEW"
        return "CREATE TABLE AS"
    if isinstance(stmt, ast.CreateFunctionStmt):
        return "CREATE PROCEDURE" if stmt.is_procedure else "CREATE FUNCTION"
    if isinstance(stmt, ast.DropStmt):
        return f"DROP {_object_type_words(stmt.removeType)}".rstrip()
    if isinstance(stmt, ast.AlterTableStmt):
        return f"ALTER {_object_type_words(stmt.objtype)}".rstrip()
    label = _STATEMENT_LABELS.get(type(stmt))
    if label is not None:
        return label
    # Others from the class name: AlterDomainStmt -> "ALTER DOMAIN".
    words = re.findall(r"[A-Z][a-z]*", type(stmt).__name__.removesuffix("Stmt"))
    return " ".join(words).upper() or type(stmt).__name__


_SESSION_STATE = (
    ast.DeclareCursorStmt,
    ast.FetchStmt,
    ast.ClosePortalStmt,
    ast.PrepareStmt,
    ast.ExecuteStmt,
    ast.DeallocateStmt,
    ast.DiscardStmt,
    ast.LoadStmt,
    ast.ConstraintsSetStmt,
)
# Statements and functions whose effect outlives the statement in the session.
_SESSION_CHANGING = (
    *_SESSION_STATE,
    ast.VariableSetStmt,
    ast.ListenStmt,
    ast.UnlistenStmt,
    ast.TransactionStmt,
)
SESSION_FUNCTIONS: frozenset[str] = frozenset(
    {
        "set_config",
        "pg_advisory_lock",
        "pg_advisory_lock_shared",
        "pg_try_advisory_lock",
        "pg_try_advisory_lock_shared",
    }
)
_MAINTENANCE = (
    ast.VacuumStmt,
    ast.ClusterStmt,
    ast.ReindexStmt,
    ast.RefreshMatViewStmt,
    ast.CheckPointStmt,
)
_DDL_CLASS_PREFIXES = (
    "Alter",
    "Create",
    "Define",
    "Drop",
    "Rename",
    "Comment",
    "Grant",
    "SecLabel",
    "Import",
    "Reassign",
    "CompositeType",
    "Index",
    "View",
    "Rule",
    "ReplicaIdentity",
)


def _write_statement_reason(stmt: ast.Node) -> str:
    """Why a statement that is never a read is a write."""
    label = _statement_label(stmt)
    if isinstance(stmt, (*_DATA_MODIFYING, ast.TruncateStmt)):
        return f"{label} modifies data"
    if isinstance(stmt, ast.CreateTableAsStmt):
        return f"{label} creates a relation"
    if isinstance(stmt, ast.TransactionStmt):
        return f"{label} is transaction control"
    if isinstance(stmt, ast.VariableSetStmt):
        return f"{label} changes session state"
    if isinstance(stmt, ast.ListenStmt | ast.UnlistenStmt | ast.NotifyStmt):
        return f"{label} works only on the primary"
    if isinstance(stmt, _SESSION_STATE):
        return f"{label} uses session state"
    if isinstance(stmt, ast.LockStmt):
        return "LOCK takes table locks"
    if isinstance(stmt, ast.CallStmt):
        return "CALL runs a procedure, which may write"
    if isinstance(stmt, ast.DoStmt):
        return "DO runs procedural code, which may write"
    if isinstance(stmt, _MAINTENANCE):
        return f"{label} is maintenance, which writes"
    if type(stmt).__name__.startswith(_DDL_CLASS_PREFIXES):
        return f"{label} is DDL, which writes"
    return f"{label} is not known to be read-only"
