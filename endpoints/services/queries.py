"""Guarded SQL services for an assistant: reads, writes, transactions and EXPLAIN.

Each checks its arguments and the SQL (:mod:`endpoints.services.sqlguard`), runs it through the
routing service (:mod:`endpoints.routing`) and returns a typed result (:class:`ReadResult`,
:class:`WriteResult`, :class:`TransactionResult`, :class:`ExplainResult`) whose values are
JSON-safe (:mod:`endpoints.core.jsonsafe`). Reads run in a ``READ ONLY`` transaction that
is rolled back, so the server refuses writes that the SQL text does not show (a view
calling a writing function).

Every statement goes through an assistant router (``purpose``: the cluster's assistant role
for reads, its assistant write role for writes, see :mod:`endpoints.core.purposes`), whose
sessions send SQL over the extended query protocol only (one statement, whatever the text
hides) with ``standard_conforming_strings`` on and a ``lock_timeout``. Results are bounded
while they are read: ``max_rows``, and for a SELECT ``max_bytes`` applied by the server as
it produces rows, so a huge result never reaches this process.
Errors: ``ValueError`` for bad arguments, :class:`sqlguard.Refused` for refused SQL, and the
routing errors (``QueryError``, ``WriteOutcomeUnknown``...) unchanged, except that a failed
transaction says which statement failed and that nothing was committed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql as pgsql
from pydantic import Field

from endpoints import routing
from endpoints.core.classify import classify
from endpoints.core.jsonsafe import shape_rows, to_json
from endpoints.core.purposes import ASSISTANT_READ, ASSISTANT_WRITE, Purpose
from endpoints.core.vocabulary import Intent, Role
from endpoints.services import sqlguard
from endpoints.services.results import Answer, Result

DEFAULT_MAX_ROWS = 500
MAX_ROWS_LIMIT = 10_000
DEFAULT_TIMEOUT_MS = 30_000
DEFAULT_MAX_BYTES = 1_000_000
MAX_BYTES_LIMIT = 50_000_000
MAX_TRANSACTION_STATEMENTS = 100

Params = Sequence[Any] | dict[str, Any] | None
Row = dict[str, Any]


class Column(Result):
    """A result column: its name and PostgreSQL type name (``int4``, ``text``...)."""

    name: str
    type: str


class ReadResult(Answer):
    """The rows of one read-only statement, and where it ran."""

    columns: list[Column]
    rows: list[Row] = Field(description="JSON-safe values, one object per row.")
    row_count: int
    truncated: bool = Field(description="Rows were left out (max_rows or the size cap).")
    endpoint: str
    role: Role
    elapsed_ms: float


class WriteResult(Answer):
    """One committed statement: rows affected, RETURNING rows, command tag, WAL position."""

    rows_affected: int
    columns: list[Column]
    rows: list[Row]
    truncated: bool
    status: str | None = Field(description="The command tag, e.g. INSERT 0 1.")
    endpoint: str
    role: Role
    elapsed_ms: float
    lsn: str | None = Field(description="The primary's WAL position after the commit.")


class StatementOutcome(Result):
    """One statement of a committed transaction."""

    rows_affected: int
    status: str | None
    rows: list[Row]
    truncated: bool


class TransactionResult(Answer):
    """Statements committed together, in order."""

    committed: bool
    statements: list[StatementOutcome]
    endpoint: str
    role: Role
    elapsed_ms: float
    lsn: str | None


class ExplainResult(Answer):
    """A statement's plan, as PostgreSQL's EXPLAIN (FORMAT JSON) gives it."""

    plan: Any
    analyzed: bool
    rolled_back: bool = Field(description="The statement ran, and was rolled back.")
    endpoint: str
    role: Role
    elapsed_ms: float


def read_query(
    cluster: str,
    sql: str,
    params: Params = None,
    *,
    read_preference: str | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    purpose: Purpose = ASSISTANT_READ,
) -> ReadResult:
    """Run one read-only statement; at most ``max_rows`` rows and ``max_bytes`` of JSON.

    A SELECT stops on the server once its rows pass ``max_bytes`` (in their text form), so
    this process never holds more than about that much of a result, whatever the query.
    """
    _check_statement(cluster, sql, params)
    _check_int("max_rows", max_rows, MAX_ROWS_LIMIT)
    _check_int("timeout_ms", timeout_ms, max_timeout_ms())
    _check_int("max_bytes", max_bytes, MAX_BYTES_LIMIT)
    sqlguard.check_read(sql, has_params=params is not None)
    result = routing.execute(
        cluster,
        sql,
        params,
        # The guard classified it a read already (a cache hit now); "auto" hands the
        # router that classification, which lets it run a SELECT as a cursor (one round
        # trip, and the server produces only max_rows + 1 rows) or stream anything else:
        # never a huge result held in memory.
        intent=Intent.AUTO,
        read_only=True,
        read_preference=read_preference,
        timeout_ms=timeout_ms,
        max_rows=max_rows,
        max_bytes=max_bytes,
        purpose=purpose,
    )
    rows, cut = shape_rows(result.rows, max_bytes)
    return ReadResult(
        columns=_columns(result),
        rows=rows,
        row_count=len(rows),
        truncated=result.truncated or cut,
        endpoint=result.endpoint,
        role=Role(result.role),
        elapsed_ms=round(result.elapsed_ms, 3),
    )


def write_statement(
    cluster: str,
    sql: str,
    params: Params = None,
    *,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
    purpose: Purpose = ASSISTANT_WRITE,
) -> WriteResult:
    """Run one statement that may write, on the primary, and commit it.

    Statements PostgreSQL refuses inside a transaction block (VACUUM, CREATE INDEX
    CONCURRENTLY...) run on their own in autocommit, the timeout set for the session.

    A lost connection raises
    ``routing.WriteOutcomeUnknown``: the write may or may not have been applied.
    """
    _check_statement(cluster, sql, params)
    _check_int("timeout_ms", timeout_ms, max_timeout_ms())
    sqlguard.check_write(sql, has_params=params is not None)
    result = routing.execute(
        cluster,
        sql,
        params,
        intent=Intent.WRITE,
        timeout_ms=timeout_ms,
        max_rows=DEFAULT_MAX_ROWS,
        purpose=purpose,
    )
    rows, cut = shape_rows(result.rows, DEFAULT_MAX_BYTES)
    return WriteResult(
        rows_affected=result.rowcount,
        columns=_columns(result),
        rows=rows,
        truncated=result.truncated or cut,
        status=result.status,
        endpoint=result.endpoint,
        role=Role(result.role),
        elapsed_ms=round(result.elapsed_ms, 3),
        lsn=result.lsn,
    )


def write_transaction(
    cluster: str,
    statements: list[dict[str, Any]],
    *,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
    purpose: Purpose = ASSISTANT_WRITE,
) -> TransactionResult:
    """Run ``[{"sql": ..., "params": ...}, ...]`` in one transaction on the primary.

    All or nothing: on an error nothing is committed and the ``QueryError`` says which
    statement (1-based) failed.
    """
    _check_cluster(cluster)
    _check_int("timeout_ms", timeout_ms, max_timeout_ms())
    pairs = _transaction_statements(statements)
    try:
        results = routing.transaction(cluster, pairs, timeout_ms=timeout_ms, purpose=purpose)
    except routing.QueryError as exc:
        raise _nothing_committed(exc) from None
    done: list[StatementOutcome] = []
    for result in results:
        # Each statement's rows are capped like write_statement's, so a huge RETURNING
        # cannot make the answer unbounded.
        rows, cut = shape_rows(result.rows[:DEFAULT_MAX_ROWS], DEFAULT_MAX_BYTES)
        done.append(
            StatementOutcome(
                rows_affected=result.rowcount,
                status=result.status,
                rows=rows,
                truncated=cut or len(result.rows) > DEFAULT_MAX_ROWS,
            )
        )
    last = results[-1]
    return TransactionResult(
        committed=True,
        statements=done,
        endpoint=last.endpoint,
        role=Role(last.role),
        elapsed_ms=round(last.elapsed_ms, 3),
        lsn=last.lsn,
    )


def _explain_read_only(
    cluster: str,
    text: str,
    params: Params,
    read_preference: str | None,
    timeout_ms: int,
    planner: Purpose,
    write_planned_as_reader: bool,
) -> routing.QueryResult:
    """``EXPLAIN`` text run in a READ ONLY transaction as ``planner``'s role."""
    try:
        return routing.execute(
            cluster,
            text,
            params,
            intent=Intent.READ,
            read_only=True,
            read_preference=read_preference,
            timeout_ms=timeout_ms,
            purpose=planner,
        )
    except routing.QueryError as exc:
        raise _planning_hint(exc, write_planned_as_reader) from None


def explain(
    cluster: str,
    sql: str,
    params: Params = None,
    *,
    analyze: bool = False,
    allow_writes: bool = False,
    read_preference: str | None = None,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
    purpose: Purpose = ASSISTANT_READ,
    write_purpose: Purpose = ASSISTANT_WRITE,
) -> ExplainResult:
    """The plan of one statement, as ``EXPLAIN (FORMAT JSON)`` gives it.

    Without ``analyze`` the statement is only planned, which reads whatever it is. With
    ``analyze`` it runs: a read in a READ ONLY transaction; a write only with
    ``allow_writes``, on the primary, in a transaction that is rolled back (reads follow
    ``read_preference``), as ``write_purpose``'s role.
    """
    _check_statement(cluster, sql, params)
    _check_bool("analyze", analyze)
    _check_bool("allow_writes", allow_writes)
    _check_int("timeout_ms", timeout_ms, max_timeout_ms())
    has_params = params is not None
    how = sqlguard.check_explain(
        sql, has_params=has_params, analyze=analyze, allow_writes=allow_writes
    )
    text = f"EXPLAIN ({'ANALYZE, ' if analyze else ''}FORMAT JSON) {sql}"
    if how == "read":
        # Planning a write needs the privilege to run it: the write role has it.
        writes = not classify(sql, client_placeholders=has_params).is_read
        planner = write_purpose if writes and allow_writes else purpose
        result = _explain_read_only(
            cluster,
            text,
            params,
            read_preference,
            timeout_ms,
            planner,
            writes and planner is purpose,
        )
        plan = next(iter(result.rows[0].values()))
        endpoint, role, elapsed_ms = result.endpoint, Role(result.role), result.elapsed_ms
    else:
        plan, endpoint, elapsed_ms = _explain_rolled_back(
            cluster, text, params, timeout_ms, write_purpose
        )
        role = Role.PRIMARY
    return ExplainResult(
        plan=to_json(plan),
        analyzed=analyze,
        # Both paths roll back; this says whether there was anything to roll back.
        rolled_back=analyze,
        endpoint=endpoint,
        role=role,
        elapsed_ms=round(elapsed_ms, 3),
    )


# Running EXPLAIN ANALYZE of a write


def _explain_rolled_back(
    cluster: str, text: str, params: Params, timeout_ms: int, purpose: Purpose
) -> tuple[Any, str, float]:
    """Run ``text`` on the primary in a transaction that is always rolled back."""
    started = time.perf_counter()
    endpoint = "primary"
    try:
        # timeout_ms: the router's watchdog cuts the connection if the server hangs.
        with routing.connection(
            cluster, intent=Intent.WRITE, timeout_ms=timeout_ms, purpose=purpose
        ) as conn:
            endpoint = _endpoint_name(cluster, conn, purpose)
            with conn.transaction(force_rollback=True):
                conn.execute(
                    pgsql.SQL("SET LOCAL statement_timeout = {}").format(
                        pgsql.Literal(f"{timeout_ms}ms")
                    )
                )
                # Never the simple protocol: it would run whatever follows a ";".
                row = routing.extended_cursor(conn).execute(text, params).fetchone()
    except psycopg.Error as exc:
        # Outside the connection's block, so routing counts a lost connection as a failure.
        # Never committed, so a lost connection changed nothing: a QueryError, not
        # WriteOutcomeUnknown.
        raise routing.QueryError.from_psycopg(exc, endpoint) from None
    assert row is not None  # EXPLAIN always returns its plan
    return row[0], endpoint, (time.perf_counter() - started) * 1000


def _endpoint_name(cluster: str, conn: psycopg.Connection[Any], purpose: Purpose) -> str:
    # routing.connection() does not say which endpoint it chose: match the address.
    view = routing.get_router(purpose).topology.current().cluster(cluster)
    for endpoint in view.endpoints if view is not None else ():
        info = endpoint.connection
        if info is not None and (info.host, info.port) == (conn.info.host, conn.info.port):
            return endpoint.name
    return f"{conn.info.host}:{conn.info.port}"


# Results


def _columns(result: routing.QueryResult) -> list[Column]:
    return [
        Column(name=name, type=type_name)
        for name, type_name in zip(result.columns, result.column_types, strict=True)
    ]


def _planning_hint(exc: routing.QueryError, write_as_reader: bool) -> routing.QueryError:
    """``exc``, with a hint when the read role lacked the privilege to plan a write."""
    if not write_as_reader or exc.sqlstate != _INSUFFICIENT_PRIVILEGE or exc.hint:
        return exc
    return routing.QueryError(
        exc.message,
        sqlstate=exc.sqlstate,
        endpoint=exc.endpoint,
        detail=exc.detail,
        hint="PostgreSQL plans a write only for a role that may run it, and the assistant "
        "role only reads; with writes allowed (run_mcp --allow-writes) it is planned as the "
        "assistant write role",
    )


_INSUFFICIENT_PRIVILEGE = "42501"


def _nothing_committed(exc: routing.QueryError) -> routing.QueryError:
    """``exc``, its message saying that the transaction was rolled back."""
    if "nothing was committed" in exc.message:
        return exc  # routing said so already (connection lost before COMMIT)
    # routing names the statement (1-based) from statement_index; without one, COMMIT failed
    # (a deferred constraint, a serialization failure), which rolls back all the same.
    prefix = "COMMIT failed: " if exc.statement_index is None else ""
    return routing.QueryError(
        f"{prefix}{exc.message}; the transaction was rolled back, nothing was committed",
        sqlstate=exc.sqlstate,
        endpoint=exc.endpoint,
        detail=exc.detail,
        hint=exc.hint,
        statement_index=exc.statement_index,
    )


# Arguments


def max_timeout_ms() -> int:
    """The largest ``timeout_ms`` an assistant may ask for (PGWARDEN_MCP_MAX_TIMEOUT_MS)."""
    return routing.assistant_limits().max_timeout_ms


def _transaction_statements(statements: Any) -> list[tuple[str, Params]]:
    if not isinstance(statements, list | tuple):
        raise ValueError(
            'statements must be a list of {"sql": ..., "params": ...} objects, '
            f"not {type(statements).__name__}"
        )
    if not statements:
        raise ValueError("statements must hold at least one statement")
    if len(statements) > MAX_TRANSACTION_STATEMENTS:
        raise ValueError(
            f"statements holds {len(statements)} statements; at most "
            f"{MAX_TRANSACTION_STATEMENTS} are allowed"
        )
    return [_transaction_statement(index, item) for index, item in enumerate(statements)]


def _transaction_statement(index: int, item: Any) -> tuple[str, Params]:
    where = f"statements[{index}]"
    if not isinstance(item, dict):
        raise ValueError(f'{where} must be an object {{"sql": ..., "params": ...}}')
    unknown = sorted(str(key) for key in item if key not in ("sql", "params"))
    if unknown:
        raise ValueError(f"{where}: unknown key {', '.join(unknown)} (expected sql, params)")
    text: Any = item.get("sql")
    params: Any = item.get("params")
    _check_sql(f"{where}.sql", text)
    _check_params(f"{where}.params", params)
    try:
        sqlguard.check_write(text, has_params=params is not None)
    except sqlguard.Refused as exc:
        raise sqlguard.Refused(f"{where}.sql: {exc}") from None
    return text, params


def _check_statement(cluster: Any, sql: Any, params: Any) -> None:
    _check_cluster(cluster)
    _check_sql("sql", sql)
    _check_params("params", params)


def _check_cluster(cluster: Any) -> None:
    if not isinstance(cluster, str) or not cluster:
        raise ValueError(f"cluster must be a cluster name, not {cluster!r}")


def _check_sql(name: str, sql: Any) -> None:
    if not isinstance(sql, str):
        raise ValueError(f"{name} must be a string, not {type(sql).__name__}")
    if not sql.strip():
        raise ValueError(f"{name} is empty")


def _check_params(name: str, params: Any) -> None:
    if params is None:
        return
    if isinstance(params, dict):
        if not all(isinstance(key, str) for key in params):
            raise ValueError(f"{name}: the names of named parameters must be strings")
        return
    if not isinstance(params, list | tuple):
        raise ValueError(
            f"{name} must be a list (for %s placeholders) or an object (for %(name)s), "
            f"not {type(params).__name__}"
        )


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, not {value!r}")


def _check_int(name: str, value: Any, limit: int) -> None:
    # bool is an int to Python, never to a caller.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, not {type(value).__name__}")
    if not 1 <= value <= limit:
        raise ValueError(f"{name} must be between 1 and {limit}, not {value}")


__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ROWS",
    "DEFAULT_TIMEOUT_MS",
    "MAX_BYTES_LIMIT",
    "MAX_ROWS_LIMIT",
    "MAX_TRANSACTION_STATEMENTS",
    "Column",
    "ExplainResult",
    "ReadResult",
    "StatementOutcome",
    "TransactionResult",
    "WriteResult",
    "explain",
    "max_timeout_ms",
    "read_query",
    "write_statement",
    "write_transaction",
]
