"""Running one routed statement on a checked-out connection, as its plan says.

The router decides *where* a statement runs; this module decides *how*: in autocommit
(one round trip), in a transaction that scopes a timeout or a read-only mode, or through
a server-side cursor (:mod:`endpoints.routing.cursors`). A write's WAL position is not
read here: :attr:`QueryResult.lsn` reads it when asked (:func:`current_lsn`).

Errors are psycopg's own; the router turns them into :mod:`endpoints.routing.errors`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import pq, sql

from endpoints.routing.cursors import (
    PIPELINE_SUPPORTED,
    end_transaction,
    read_capped,
    read_through_cursor,
)
from endpoints.routing.pools import TrackedConnection
from endpoints.routing.results import (
    ExtendedCursor,
    QueryResult,
    build_result,
    fetch,
    stream_chunk,
)

# Schema-qualified: a session's search_path must not pick a function of the same name.
_LSN_SQL = b"SELECT pg_catalog.pg_current_wal_lsn()::text"


@dataclass(frozen=True, slots=True)
class StatementPlan:
    """How to run one statement; built once per request by the router."""

    # Roll back rather than commit when the statement runs in a transaction of its own.
    read: bool
    # In a READ ONLY transaction that is always rolled back.
    read_only: bool = False
    timeout_ms: int | None = None
    max_rows: int | None = None
    # Read rows in single-row/chunked mode and stop after max_rows + 1.
    stream: bool = False
    # A read-only single SELECT that a server-side cursor can bound.
    as_cursor: bool = False
    # VACUUM, CREATE INDEX CONCURRENTLY...: never inside a transaction block.
    outside_transaction: bool = False
    # Never the simple query protocol (an assistant's statements).
    extended: bool = False
    # The byte-capped text of the SELECT (see cursors.byte_capped), or None.
    capped: str | None = None

    # Nothing to set up around the statement: autocommit, one round trip (derived, and
    # stored rather than a property: read on every request).
    plain: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        plain = not (self.timeout_ms or self.read_only or self.outside_transaction)
        object.__setattr__(self, "plain", plain)


def run_statement(
    conn: psycopg.Connection[Any], sql_text: str, params: Any, plan: StatementPlan
) -> QueryResult:
    if plan.plain:
        return execute(conn, sql_text, params, plan)
    if plan.outside_transaction:
        # PostgreSQL refuses it in a transaction block, so the timeout is the session's:
        # the router closes this connection afterwards.
        if plan.timeout_ms:
            conn.execute(f"SET statement_timeout = '{int(plan.timeout_ms)}ms'".encode())
        return execute(conn, sql_text, params, plan, stream=False)
    if plan.read_only and plan.as_cursor and PIPELINE_SUPPORTED:
        if plan.capped is not None:
            return read_capped(
                conn, plan.capped, params, timeout_ms=plan.timeout_ms, max_rows=plan.max_rows
            )
        return read_through_cursor(
            conn, sql_text, params, timeout_ms=plan.timeout_ms, max_rows=plan.max_rows
        )
    return _in_transaction(conn, sql_text, params, plan)


def _in_transaction(
    conn: psycopg.Connection[Any], sql_text: str, params: Any, plan: StatementPlan
) -> QueryResult:
    # A transaction scopes the timeout (SET LOCAL) and the read-only mode (before the
    # statement, so the server refuses any write it might do); reads are rolled back, not
    # committed. BEGIN and the settings go in one round trip: psycopg's transaction()
    # would spend one on each.
    setup = "BEGIN READ ONLY" if plan.read_only else "BEGIN"
    if plan.timeout_ms:
        setup += f"; SET LOCAL statement_timeout = '{int(plan.timeout_ms)}ms'"
    conn.execute(setup.encode())
    try:
        result = execute(conn, sql_text, params, plan)
    except BaseException:
        end_transaction(conn, "ROLLBACK")
        raise
    end_transaction(conn, "ROLLBACK" if plan.read or plan.read_only else "COMMIT")
    return result


def execute(
    conn: psycopg.Connection[Any],
    sql_text: str,
    params: Any,
    plan: StatementPlan,
    *,
    stream: bool | None = None,
) -> QueryResult:
    max_rows = plan.max_rows
    if (plan.stream if stream is None else stream) and max_rows is not None:
        # Single-row mode: stop reading after max_rows + 1 (psycopg cancels the rest),
        # so a huge result is never held in memory.
        cur = ExtendedCursor(conn) if plan.extended else conn.cursor()
        rows: list[Any] = []
        for row in cur.stream(sql_text, params, size=stream_chunk(max_rows)):
            rows.append(row)
            if len(rows) > max_rows:
                break
        return build_result(cur, rows, max_rows)
    cur = _reusable_cursor(conn, plan.extended)
    cur.execute(sql_text, params)
    while cur.nextset():
        pass  # several statements: report the last one
    result = fetch(cur, max_rows=max_rows)
    # Read out: the idle connection must not keep this result alive until its next use
    # (psycopg's own reset, which its next execute would run anyway).
    cur._reset()
    return result


def _reusable_cursor(conn: psycopg.Connection[Any], extended: bool) -> psycopg.Cursor[Any]:
    # One cursor per pooled connection, reused by every routed statement on it: building a
    # cursor (its own adapters map and state) and tearing it down cost more than the rest of
    # the statement's Python (measured: SELECT 1 on one connection, 48 -> 39 µs per call).
    cur: psycopg.Cursor[Any] | None = getattr(conn, "routed_cursor", None)
    if cur is None or cur.closed or (type(cur) is ExtendedCursor) != extended:
        cur = ExtendedCursor(conn) if extended else conn.cursor()
        if isinstance(conn, TrackedConnection):
            conn.routed_cursor = cur
    return cur


def current_lsn(conn: psycopg.Connection[Any]) -> str | None:
    # After the commit, so a replica that replayed this position sees the write.
    try:
        row = conn.execute(_LSN_SQL).fetchone()
    except psycopg.Error:
        return None  # the write itself succeeded; only the position is unknown
    return row[0] if row else None


def set_local_timeout(conn: psycopg.Connection[Any], timeout_ms: int) -> None:
    conn.execute(
        sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(f"{int(timeout_ms)}ms"))
    )


def set_session_timeout(conn: psycopg.Connection[Any], timeout_ms: int) -> None:
    conn.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(f"{int(timeout_ms)}ms")))


def restore_session(conn: psycopg.Connection[Any]) -> None:
    """Undo what a raw-connection caller may have changed, before the next caller."""
    if conn.closed or conn.broken:
        return
    try:
        if conn.pgconn.transaction_status != pq.TransactionStatus.IDLE:
            conn.rollback()
        if not conn.autocommit:
            conn.autocommit = True
        conn.read_only = None
        conn.isolation_level = None
        conn.execute("RESET ALL")
    except psycopg.Error:
        conn.close()  # the pool replaces it


def connection_lost(conn: psycopg.Connection[Any], exc: BaseException) -> bool:
    if conn.closed or conn.broken:
        return True
    # Failures before any server answer (no SQLSTATE) on an OperationalError.
    return isinstance(exc, psycopg.OperationalError) and exc.sqlstate is None
