"""Read-only SELECTs through a server-side cursor in one round trip, and the byte cap.

:func:`read_through_cursor` sends BEGIN READ ONLY, the settings, the cursor, one FETCH and
the ROLLBACK together in pipeline mode; :func:`byte_capped` wraps a SELECT so the server
itself stops once its rows pass a byte budget. Used by :mod:`endpoints.routing.statements`
for an assistant's bounded reads.
"""

from __future__ import annotations

import re
from typing import Any, LiteralString

import psycopg
from psycopg import pq

from endpoints.core.classify import Classification
from endpoints.routing.results import QueryResult, build_result

PIPELINE_SUPPORTED = psycopg.Pipeline.is_supported()
_CURSOR_NAME = "pgwarden_read"


def read_through_cursor(
    conn: psycopg.Connection[Any],
    sql_text: str,
    params: Any,
    *,
    timeout_ms: int | None,
    max_rows: int | None,
    fetch_rows: int | None = None,
    extra_columns: int = 0,
) -> QueryResult:
    """A read-only SELECT in one network round trip, rolled back, reading max_rows + 1 rows.

    BEGIN READ ONLY, the settings, the query as a cursor, one FETCH and the ROLLBACK go to
    the server together in pipeline mode: one round trip where running them one by one
    takes three. The cursor is what keeps it bounded: the server produces at most
    max_rows + 1 rows (``fetch_rows``, when given), as many as streaming would read.
    ``extra_columns``: trailing columns of the query that are not the caller's.
    """
    if fetch_rows is None:
        fetch_rows = max_rows + 1 if max_rows is not None else None
    fetch = f"FETCH FORWARD {fetch_rows}" if fetch_rows is not None else "FETCH ALL"
    rows_cur = conn.cursor()
    try:
        with conn.pipeline():
            conn.execute(b"BEGIN READ ONLY")
            conn.execute(_cursor_settings(timeout_ms))
            conn.execute(f"DECLARE {_CURSOR_NAME} NO SCROLL CURSOR FOR {sql_text}", params)
            rows_cur.execute(f"{fetch} FROM {_CURSOR_NAME}".encode())
            conn.execute(b"ROLLBACK")
    except BaseException:
        # A failed statement aborts the rest of the pipeline, ROLLBACK included.
        forget_prepared(conn)
        if conn.info.transaction_status != pq.TransactionStatus.IDLE:
            end_transaction(conn, "ROLLBACK")
        raise
    result = build_result(rows_cur, rows_cur.fetchall(), max_rows, extra_columns=extra_columns)
    # The query's own tag rather than FETCH's; unknown when rows were left unread.
    result.status = None if result.truncated else f"SELECT {len(result.rows)}"
    return result


# A byte cap the server applies while it produces rows (see byte_capped).
_CAP_MARKER = "pgwarden: result over the byte cap at row "
_CAP_ROW = re.compile(re.escape(_CAP_MARKER) + r"(\d+)")


def byte_capped(
    sql_text: str, classification: Classification | None, max_bytes: int | None
) -> str | None:
    """A SELECT wrapped so that the server stops once its rows pass ``max_bytes``; or None.

    The wrapper keeps a running total of each row's size in its text form (what travels
    in text format, quoting included, so never less) and raises an error, recognisable
    by :data:`_CAP_MARKER` and the row's number, at the first row that would take the
    total past the cap, before sending it. So whatever the query, this process receives
    at most ``max_bytes`` of row data: no row, however large, is ever fetched whole to be
    thrown away. The error costs the FETCH its rows; the caller then fetches exactly the
    rows before that one (:func:`read_capped`). The window keeps the query's own row
    order (no PARTITION BY or ORDER BY of its own) and reads rows as they are fetched.
    None when there is no cap, or the SQL is not one SELECT a cursor takes.
    """
    if max_bytes is None or classification is None or not classification.cursor_ok:
        return None
    trailing = classification.trailing_chars
    statement = sql_text[: len(sql_text) - trailing] if trailing else sql_text
    # The statement is the caller's SQL by design (checked by the guard, one statement).
    return (
        "SELECT pgwarden_rows.*, CASE WHEN pg_catalog.sum(pg_catalog.octet_length("  # noqa: S608
        "ROW(pgwarden_rows.*)::pg_catalog.text)) OVER pgwarden_window > "
        f"{int(max_bytes)}::pg_catalog.int8 THEN pg_catalog.concat('{_CAP_MARKER}', "
        "pg_catalog.row_number() OVER pgwarden_window)::pg_catalog.int4 END "
        # A newline ends a trailing -- comment of the statement.
        f"AS pgwarden_capped FROM (\n{statement}\n) AS pgwarden_rows "
        "WINDOW pgwarden_window AS (ROWS UNBOUNDED PRECEDING)"
    )


def read_capped(
    conn: psycopg.Connection[Any],
    capped_sql: str,
    params: Any,
    *,
    timeout_ms: int | None,
    max_rows: int | None,
) -> QueryResult:
    """:func:`read_through_cursor` of a capped statement: the rows within the byte cap.

    One round trip when the rows fit. Otherwise the server stopped at the row that did
    not: the statement runs again for exactly the rows before it (``truncated``). Should a
    query whose rows change between runs pass the cap early again, the answer is empty
    and ``truncated``, never unbounded.
    """
    fetch_rows: int | None = None
    for _ in range(2):
        try:
            result = read_through_cursor(
                conn,
                capped_sql,
                params,
                timeout_ms=timeout_ms,
                max_rows=max_rows,
                fetch_rows=fetch_rows,
                extra_columns=1,
            )
        except psycopg.errors.InvalidTextRepresentation as exc:
            over_at = _over_cap_row(exc)
            if over_at is None:
                raise  # the query's own error
            fetch_rows = over_at - 1
            continue
        if fetch_rows is not None:
            result.truncated = True
            result.status = None
        return result
    return _empty_truncated()


def _over_cap_row(exc: psycopg.Error) -> int | None:
    match = _CAP_ROW.search(exc.diag.message_primary or "")
    return int(match.group(1)) if match else None


def _empty_truncated() -> QueryResult:
    return QueryResult(
        columns=[],
        rows=[],
        rowcount=0,
        truncated=True,
        endpoint="",
        role="",
        elapsed_ms=0.0,
        attempts=0,
    )


def forget_prepared(conn: psycopg.Connection[Any]) -> None:
    """Drop psycopg's prepared statements of ``conn`` after a pipeline was aborted.

    psycopg prepares a statement it has run five times, and counts it prepared as soon as
    it queues the PREPARE. When a statement before it fails, the rest of the pipeline is
    skipped, the PREPARE too, and psycopg would go on executing a statement the server
    never prepared: the next ROLLBACK failed, the connection was closed, and the read
    retried elsewhere as if the connection had been lost. Clearing the cache makes
    psycopg deallocate them all on the next statement and count afresh. (psycopg 3.3's
    prepared cache is not public API; without it, this changes nothing.)
    """
    prepared = getattr(conn, "_prepared", None)
    if prepared is not None:
        prepared.clear()


def _cursor_settings(timeout_ms: int | None) -> bytes:
    """Transaction-local settings in one statement: the timeout, and plans as for a query.

    A cursor is planned for a fast start (cursor_tuple_fraction 0.1); at 1 it gets the
    plan the same statement gets on its own, the one ``explain`` shows.
    """
    settings = "set_config('cursor_tuple_fraction', '1', true)"
    if timeout_ms:
        settings += f", set_config('statement_timeout', '{int(timeout_ms)}ms', true)"
    return f"SELECT {settings}".encode()


def end_transaction(conn: psycopg.Connection[Any], command: LiteralString) -> None:
    """ROLLBACK or COMMIT what run_statement began, if the connection can still hear it.

    A COMMIT that fails raises (the caller decides what an unknown outcome means); a
    ROLLBACK after an error must not hide that error: a failed one breaks the connection,
    which the pool then discards.
    """
    if command == "COMMIT":
        conn.execute(command)
        return
    if conn.closed or conn.broken:
        return
    try:
        conn.execute(command)
    except psycopg.Error:
        conn.close()
