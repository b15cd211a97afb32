"""What a routed statement returns, and how a psycopg cursor becomes one.

:class:`QueryResult` is the routing service's answer to ``execute`` and each statement of
``transaction``. :func:`build_result` reads the libpq result directly (column names, type
names, the command tag): it runs on every request. :class:`ExtendedCursor` never uses the
simple query protocol, so a string carries exactly one statement to the server.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import pq
from psycopg._queries import PostgresQuery

from endpoints.routing.pools import TrackedConnection


@dataclass(slots=True)
class QueryResult:
    columns: list[str]
    rows: list[dict[str, Any]]
    rowcount: int
    truncated: bool
    endpoint: str
    role: str
    elapsed_ms: float
    attempts: int
    column_types: list[str] = field(default_factory=list)
    # The command tag, e.g. "INSERT 0 1".
    status: str | None = None
    _lsn: str | None = field(default=None, repr=False)
    _lsn_reader: Callable[[], str | None] | None = field(default=None, repr=False, compare=False)

    @property
    def lsn(self) -> str | None:
        """After a write, the primary's WAL position once it committed, else None.

        Pass it as ``min_lsn`` to later reads so they only go to endpoints that have
        replayed the write. Read from the primary on first access, not with the write:
        most callers never look, and a second statement per write would double its cost.
        Any position the primary reports after the commit is at or past the commit
        record (WAL positions only grow), so a replica that replayed it sees the write.
        None if the primary's pool is gone by then (endpoint changed, router reset).
        """
        reader = self._lsn_reader
        if reader is not None:
            self._lsn_reader = None
            self._lsn = reader()
        return self._lsn

    @lsn.setter
    def lsn(self, value: str | None) -> None:
        self._lsn_reader = None
        self._lsn = value

    def read_lsn_later(self, reader: Callable[[], str | None]) -> None:
        """Have :attr:`lsn` call ``reader`` on first access (see there)."""
        self._lsn_reader = reader


class ExtendedCursor(psycopg.Cursor[Any]):
    """A cursor that sends every statement over the extended query protocol.

    psycopg uses the simple protocol for a statement without parameters, and the simple
    protocol runs every statement in the string: ``SELECT 1; DROP TABLE t``. The extended
    protocol's Parse message takes exactly one, so whatever the SQL text hides (a quote the
    guard's parser read differently, say) the server refuses a second statement.
    """

    def _execute_send(
        self,
        query: PostgresQuery,
        *,
        force_extended: bool = False,
        binary: bool | None = None,
    ) -> None:
        super()._execute_send(query, force_extended=True, binary=binary)


def cursor_for(conn: psycopg.Connection[Any], *, extended: bool) -> psycopg.Cursor[Any]:
    return ExtendedCursor(conn) if extended else conn.cursor()


def extended_cursor(conn: psycopg.Connection[Any]) -> psycopg.Cursor[Any]:
    """A cursor on ``conn`` that never uses the simple query protocol (see ExtendedCursor)."""
    return ExtendedCursor(conn)


# Rows per message while streaming: a chunk costs one result to build, a row in single-row
# mode one each; bounded so that a huge max_rows still reads in bounded memory.
STREAM_CHUNK_MAX = 1000


def stream_chunk(max_rows: int) -> int:
    """Chunked rows (libpq 17+: psycopg's binary package ships it), else one at a time."""
    if pq.version() < 170000:
        return 1
    return max(1, min(max_rows + 1, STREAM_CHUNK_MAX))


def fetch(cur: psycopg.Cursor[Any], *, max_rows: int | None) -> QueryResult:
    result = cur.pgresult
    if result is None or not result.nfields:
        return build_result(cur, [], None)  # a command: no rows to fetch
    rows = cur.fetchall() if max_rows is None else cur.fetchmany(max_rows + 1)
    return build_result(cur, rows, max_rows)


def build_result(
    cur: psycopg.Cursor[Any], rows: list[Any], max_rows: int | None, *, extra_columns: int = 0
) -> QueryResult:
    # This runs on every request, right after waiting on the network with cold CPU caches:
    # every step counts, hence reading the libpq result directly rather than
    # cursor.description (which builds objects on each access).
    truncated = max_rows is not None and len(rows) > max_rows
    if truncated:
        del rows[max_rows:]
    result = cur.pgresult
    columns: list[str] = []
    types: list[str] = []
    dict_rows: list[dict[str, Any]] = []
    if result is not None and result.nfields:
        encoding = _encoding(cur.connection)
        for i in range(result.nfields - extra_columns):
            columns.append((result.fname(i) or b"").decode(encoding))
            types.append(_type_name(cur, result.ftype(i)))
        if extra_columns:
            width = len(columns)
            dict_rows = [dict(zip(columns, row[:width], strict=True)) for row in rows]
        else:
            dict_rows = [dict(zip(columns, row, strict=True)) for row in rows]
    rowcount = cur.rowcount
    # Positional (in field order: columns, rows, rowcount, truncated, endpoint, role,
    # elapsed_ms, attempts, column_types, status): half the cost of keywords here.
    return QueryResult(
        columns,
        dict_rows,
        rowcount if rowcount >= 0 else len(dict_rows),
        truncated,
        "",
        "",
        0.0,
        0,
        types,
        cur.statusmessage,
    )


def _encoding(conn: psycopg.Connection[Any]) -> str:
    # Pool connections remember it: client_encoding only changes through SET, which
    # routed statements do not leave behind (raw connections are RESET on return).
    encoding: str | None = getattr(conn, "python_encoding", None)
    if encoding is None:
        encoding = conn.info.encoding
        if isinstance(conn, TrackedConnection):
            conn.python_encoding = encoding
    return encoding


# Built-in types (OIDs below FirstNormalObjectId) are the same on every server.
_BUILTIN_TYPE_NAMES: dict[int, str] = {}
_FIRST_USER_OID = 16384


def _type_name(cur: psycopg.Cursor[Any], oid: int) -> str:
    name = _BUILTIN_TYPE_NAMES.get(oid)
    if name is not None:
        return name
    info = cur.adapters.types.get(oid)
    if info is None:
        name = _server_type_name(cur.connection, oid)
    elif oid == info.array_oid:  # the registry indexes arrays under their element type
        name = f"{info.name}[]"
    else:
        name = info.name
    if oid < _FIRST_USER_OID:
        _BUILTIN_TYPE_NAMES[oid] = name
    return name


def _server_type_name(conn: psycopg.Connection[Any], oid: int) -> str:
    """A type psycopg does not know (an enum, a domain...): the server names it.

    Not cached: user types' OIDs differ between databases and come back after a DROP.
    """
    try:
        row = conn.execute("SELECT format_type(%s, NULL)", [oid]).fetchone()
    except psycopg.Error:
        return str(oid)
    return str(row[0]) if row and row[0] else str(oid)
