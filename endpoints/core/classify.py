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
immutable and stable functions, from ``readonly_functions.txt``, plus the volatile but
read-only ones such as ``random()`` and ``pg_sleep()`` of ``readonly_functions_extra.txt``),
or one qualified with a schema other
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

This module is the public entry point. The function tables are data files beside it, loaded
once by :mod:`endpoints.core.classify_tables`; parsing and the tree walk are
:mod:`endpoints.core.sqltree`; the verdict for one statement is
:mod:`endpoints.core.classify_statements`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

from pglast import ast
from pglast.parser import ParseError

from endpoints.core.classify_statements import (
    SESSION_CHANGING,
    Kind,
    classify_statement,
    collect_facts,
    outside_transaction,
)
from endpoints.core.classify_tables import (
    READ_ONLY_FUNCTIONS,
    SESSION_FUNCTIONS,
    WRITE_FUNCTION_PREFIXES,
    WRITE_FUNCTION_SUFFIXES,
    WRITE_FUNCTIONS,
    is_known_read_only_call,
    is_write_function,
)
from endpoints.core.sqltree import parse_statements

# Statements longer than this are not cached: 4096 entries of this size bound the cache's
# memory at 64 MiB, and a long statement costs far more to run than to parse again.
CACHED_MAX_CHARS = 16 * 1024
CACHE_SIZE = 4096

# Longer SQL is a write without parsing. pglast needs up to ~10 µs of CPU and ~180 bytes of
# stack per character (deeply nested SQL), so this bounds both at ~2.5 s and ~100 MiB.
MAX_CLASSIFIED_CHARS = 256 * 1024


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


def _parse(sql: str) -> tuple[ast.RawStmt, ...] | Classification:
    """``sql``'s statements, or the write verdict for SQL that is not parsed."""
    if "\x00" in sql:
        return _write("contains a NUL character", parse_error="SQL contains a NUL character")
    if len(sql) > MAX_CLASSIFIED_CHARS:
        return _write(f"too long to classify (over {MAX_CLASSIFIED_CHARS} characters)")
    try:
        return parse_statements(sql)
    except ParseError as exc:
        return _write(f"could not parse: {exc}", parse_error=str(exc))
    except (UnicodeError, RecursionError, MemoryError, RuntimeError) as exc:
        # Lone surrogates cannot be encoded for the parser; the others are resource limits.
        message = f"{type(exc).__name__}: {exc}"
        return _write(f"could not parse: {message}", parse_error=message)


def _classify(sql: str, strict: bool) -> Classification:
    raw_statements = _parse(sql)
    if isinstance(raw_statements, Classification):
        return raw_statements
    functions: set[str] = set()
    verdicts: list[tuple[Kind, str]] = []
    for raw in raw_statements:
        if raw.stmt is None:  # not produced by the parser; default deny all the same
            verdicts.append(("write", "the parser returned an empty statement"))
            continue
        facts = collect_facts(raw.stmt)
        verdicts.append(classify_statement(raw.stmt, facts, strict))
        for parts in facts.calls:
            functions.add(parts[-1])
            if len(parts) > 1:
                functions.add(f"{parts[-2]}.{parts[-1]}")

    count = len(verdicts)
    if count == 0:
        return Classification("read", "no statement", 0, frozenset(), None)
    session = any(isinstance(raw.stmt, SESSION_CHANGING) for raw in raw_statements) or bool(
        functions & SESSION_FUNCTIONS
    )
    outside = count == 1 and outside_transaction(raw_statements[0].stmt)
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


__all__ = [
    "CACHED_MAX_CHARS",
    "CACHE_SIZE",
    "MAX_CLASSIFIED_CHARS",
    "READ_ONLY_FUNCTIONS",
    "SESSION_FUNCTIONS",
    "WRITE_FUNCTIONS",
    "WRITE_FUNCTION_PREFIXES",
    "WRITE_FUNCTION_SUFFIXES",
    "Classification",
    "Kind",
    "classify",
    "is_known_read_only_call",
    "is_write_function",
    "to_server_placeholders",
]
