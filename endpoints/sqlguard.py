"""Decide whether SQL sent by an assistant may run, as a read or as a write.

:func:`check_read` admits one statement that :func:`endpoints.classify.classify` calls a read;
:func:`check_write` admits one statement that is not transaction control or session state; both
refuse ``COPY`` and calls of :data:`REFUSED_FUNCTIONS` (files, other servers, server control,
SQL hidden in strings) wherever they appear; :func:`check_explain` decides how ``EXPLAIN
[ANALYZE]`` of a statement may run. Anything refused raises :class:`Refused`, whose message
says why in one sentence.

This is the first line only: reads also run in a ``READ ONLY`` transaction that is rolled back
(see :func:`endpoints.routing.execute`), which catches writes hidden in views or user functions.
"""

from __future__ import annotations

import functools
from typing import Any

from pglast import ast

# classify's parser entry point runs deeply nested SQL on a thread with a large enough stack;
# the top-level statement type is not part of Classification, so it is parsed here again.
from endpoints.classify import (
    CACHE_SIZE,
    CACHED_MAX_CHARS,
    Classification,
    Kind,
    classify,
    is_write_function,
    to_server_placeholders,
)
from endpoints.classify import _parse as parse_statements
from endpoints.routing import RoutingError

_FILES = "reads files on the database server"
_DIRECTORIES = "lists directories on the database server"
_WRITES_FILES = "writes files on the database server"
_LARGE_OBJECTS = "uses large objects, which read and write data outside tables"
_REMOTE = "connects to another server"
_HIDDEN_SQL = "runs SQL passed as a string, which cannot be checked"

# Why each refused function is refused, by lower-case unqualified name.
_REFUSED: dict[str, str] = {
    "pg_read_file": _FILES,
    "pg_read_binary_file": _FILES,
    "pg_stat_file": "reads file metadata on the database server",
    "pg_ls_dir": _DIRECTORIES,
    "pg_ls_logdir": _DIRECTORIES,
    "pg_ls_waldir": _DIRECTORIES,
    "pg_ls_tmpdir": _DIRECTORIES,
    "pg_ls_archive_statusdir": _DIRECTORIES,
    "pg_ls_logicalsnapdir": _DIRECTORIES,
    "pg_ls_logicalmapdir": _DIRECTORIES,
    "pg_ls_replslotdir": _DIRECTORIES,
    # adminpack, current and legacy names.
    "pg_file_write": _WRITES_FILES,
    "pg_file_rename": _WRITES_FILES,
    "pg_file_unlink": _WRITES_FILES,
    "pg_file_sync": _WRITES_FILES,
    "pg_file_read": _FILES,
    "pg_file_length": "reads file metadata on the database server",
    "pg_logdir_ls": _DIRECTORIES,
    "lo_import": "reads a file on the database server into a large object",
    "lo_export": "writes a large object to a file on the database server",
    **dict.fromkeys(
        (
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
        ),
        _LARGE_OBJECTS,
    ),
    "dblink": _REMOTE,
    **dict.fromkeys(
        (
            "dblink_connect",
            "dblink_connect_u",
            "dblink_exec",
            "dblink_open",
            "dblink_fetch",
            "dblink_send_query",
            "dblink_get_result",
        ),
        _REMOTE,
    ),
    "pg_terminate_backend": "ends another session",
    "pg_cancel_backend": "cancels another session's query",
    "pg_log_backend_memory_contexts": "signals another server process",
    "pg_reload_conf": "reloads the server configuration",
    "pg_rotate_logfile": "rotates the server log",
    "pg_rotate_logfile_old": "rotates the server log",
    "pg_promote": "promotes a standby server",
    "set_config": "changes settings, which would outlive the request on a pooled connection",
    # These execute a query given as text, where nothing above can see what it calls:
    # query_to_xml('select pg_read_file(...)', ...) reads a file.
    "query_to_xml": _HIDDEN_SQL,
    "query_to_xmlschema": _HIDDEN_SQL,
    "query_to_xml_and_xmlschema": _HIDDEN_SQL,
    "ts_stat": _HIDDEN_SQL,
    "ts_rewrite": _HIDDEN_SQL,
}

REFUSED_FUNCTIONS: frozenset[str] = frozenset(_REFUSED)

# Families refused by name prefix, for call syntax ``f(...)``.
REFUSED_FUNCTION_PREFIXES: dict[str, str] = {
    "pg_ls_": _DIRECTORIES,
    "pg_file_": "accesses files on the database server",
    "lo_": _LARGE_OBJECTS,
    "dblink_": _REMOTE,
}

_READ_ONLY_HINT = "query only reads (use execute, which needs --allow-writes)"

# What EXPLAIN can wrap (EXECUTE and DECLARE need session state a pooled connection lacks).
_EXPLAINABLE = (
    ast.SelectStmt,
    ast.InsertStmt,
    ast.UpdateStmt,
    ast.DeleteStmt,
    ast.MergeStmt,
    ast.CreateTableAsStmt,
)

# Statements whose effect outlives the statement on a pooled connection (a committed SET
# persists for the session) or that only make sense with a session of one's own.
_SESSION_STATE = (
    ast.VariableSetStmt,
    ast.DiscardStmt,
    ast.ListenStmt,
    ast.UnlistenStmt,
    ast.PrepareStmt,
    ast.ExecuteStmt,
    ast.DeallocateStmt,
    ast.DeclareCursorStmt,
    ast.FetchStmt,
    ast.ClosePortalStmt,
    ast.LoadStmt,
)


class Refused(RoutingError):
    """The SQL may not run through this path; the message names the reason."""


def refused_function_reason(name: str) -> str | None:
    """Why calling ``name`` (any case, possibly schema-qualified) is refused, or None."""
    unqualified = name.rpartition(".")[2].lower()
    reason = _REFUSED.get(unqualified)
    if reason is not None:
        return reason
    for prefix, family_reason in REFUSED_FUNCTION_PREFIXES.items():
        if unqualified.startswith(prefix):
            return family_reason
    return None


def check_read(sql: str, *, has_params: bool = False) -> Classification:
    """``sql``'s classification if it is one statement that only reads; else :class:`Refused`.

    ``has_params``: the SQL goes to psycopg with parameters (``%s`` placeholders).
    Statements that pass are remembered (as ``classify`` remembers its verdicts), so a
    repeated query is not parsed again; refusals are not.
    """
    if isinstance(sql, str) and len(sql) <= CACHED_MAX_CHARS:
        return _check_read_cached(sql, has_params)
    return _check_read(sql, has_params)


@functools.lru_cache(maxsize=CACHE_SIZE)
def _check_read_cached(sql: str, has_params: bool) -> Classification:
    return _check_read(sql, has_params)


def _check_read(sql: str, has_params: bool) -> Classification:
    classification, stmt = _one_statement(sql, has_params)
    attributes = _attribute_names(stmt)
    _check_functions(classification, attributes)
    if isinstance(stmt, ast.CopyStmt):
        raise Refused("refused: COPY is not supported through query; use SELECT")
    reason = _write_reason(classification, attributes)
    if reason is not None:
        raise Refused(f"refused: {reason}; {_READ_ONLY_HINT}")
    return classification


def check_write(sql: str, *, has_params: bool = False) -> Classification:
    """``sql``'s classification if it is one statement allowed to write; else :class:`Refused`."""
    classification, stmt = _one_statement(sql, has_params)
    _check_functions(classification, _attribute_names(stmt))
    if isinstance(stmt, ast.CopyStmt):
        raise Refused(
            "refused: COPY is not supported (it needs a server file, a program or a client "
            "data stream); use INSERT or SELECT"
        )
    if isinstance(stmt, ast.TransactionStmt):
        raise Refused("refused: transaction control is not allowed; use transaction")
    if isinstance(stmt, _SESSION_STATE):
        raise Refused(
            f"refused: {classification.reason}, which would outlive this request on a pooled "
            "connection"
        )
    return classification


def check_explain(
    sql: str, *, has_params: bool = False, analyze: bool = False, allow_writes: bool = False
) -> Kind:
    """How ``EXPLAIN [ANALYZE] sql`` may run: ``"read"`` or ``"write"``; else :class:`Refused`.

    ``sql`` must be one statement of a kind EXPLAIN accepts, not itself an EXPLAIN, calling no
    refused function. Without ``analyze`` it is only planned, which reads whatever it is.
    With ``analyze`` it runs: a statement that writes is refused unless ``allow_writes``, and
    then ``"write"`` means it must run on the primary in a transaction that is rolled back.
    """
    classification, stmt = _one_statement(sql, has_params)
    if isinstance(stmt, ast.ExplainStmt):
        raise Refused("refused: the statement is already an EXPLAIN; pass the statement itself")
    attributes = _attribute_names(stmt)
    _check_functions(classification, attributes)
    if not isinstance(stmt, _EXPLAINABLE):
        raise Refused(
            "refused: EXPLAIN takes only SELECT, VALUES, TABLE, INSERT, UPDATE, DELETE, MERGE "
            f"or CREATE TABLE AS ({classification.reason})"
        )
    reason = _write_reason(classification, attributes) if analyze else None
    if reason is None:
        return "read"
    if not allow_writes:
        raise Refused(
            f"refused: EXPLAIN ANALYZE runs the statement, and {reason}; pass allow_writes to "
            "run it in a transaction that is rolled back"
        )
    return "write"


def _one_statement(sql: str, has_params: bool) -> tuple[Classification, ast.Node]:
    """The classification and the parse tree of ``sql``, which must be exactly one statement."""
    if not isinstance(sql, str):
        raise TypeError(f"sql must be a string, not {type(sql).__name__}")
    classification = classify(sql, client_placeholders=has_params)
    if classification.parse_error is not None:
        raise Refused(f"refused: the SQL does not parse: {classification.parse_error}")
    count = classification.statement_count
    if count == 0:
        if not classification.is_read:
            raise Refused(f"refused: {classification.reason}")  # e.g. too long to parse
        raise Refused("refused: the SQL is empty (no statement)")
    if count > 1:
        raise Refused(f"refused: only one statement at a time (found {count})")
    text = to_server_placeholders(sql) if has_params else sql
    stmt = parse_statements(text)[0].stmt
    if stmt is None:  # pragma: no cover - the parser always fills it
        raise Refused("refused: the parser returned an empty statement")
    return classification, stmt


def _check_functions(classification: Classification, attributes: list[str]) -> None:
    for name in sorted(classification.functions):
        reason = refused_function_reason(name)
        if reason is not None:
            raise Refused(f"refused: {name.rpartition('.')[2]}() {reason}")
    for attribute in attributes:
        reason = _REFUSED.get(attribute)
        if reason is not None:
            raise Refused(f"refused: {_attribute_call(attribute)}, which {reason}")


def _write_reason(classification: Classification, attributes: list[str]) -> str | None:
    """Why a statement may write, or None if it only reads (as far as the SQL text shows)."""
    if not classification.is_read:
        return classification.reason
    for attribute in attributes:
        # Exact names only (not the lo_ family): ordinary columns are often called lo_something.
        if is_write_function(attribute) and not attribute.startswith("lo_"):
            return f"{_attribute_call(attribute)}, which writes or needs the primary"
    return None


def _attribute_call(name: str) -> str:
    # PostgreSQL reads ``x.f`` and ``(x).f`` as ``f(x)`` when x has no column f, for any
    # one-argument function: ``SELECT x.pg_read_file FROM CAST('/etc/passwd' AS text) x``
    # reads the file, yet the parse tree holds no function call, so classify() misses it.
    return f".{name} calls {name}() in attribute notation (x.{name} means {name}(x))"


def _attribute_names(top: ast.Node) -> list[str]:
    """Lower-case names after a dot in column references: ``b`` in ``a.b`` and ``(a).b``."""
    names: list[str] = []
    # An explicit stack, not recursion: SQL can nest deeper than Python's recursion limit.
    stack: list[Any] = [top]
    while stack:
        item = stack.pop()
        if isinstance(item, tuple):
            stack.extend(item)
            continue
        if not isinstance(item, ast.Node):
            continue
        if isinstance(item, ast.ColumnRef):
            fields = item.fields or ()
            names.extend(_name(part) for part in fields[1:] if isinstance(part, ast.String))
            continue
        if isinstance(item, ast.A_Indirection):
            parts = item.indirection or ()
            names.extend(_name(part) for part in parts if isinstance(part, ast.String))
        # pglast nodes list their attributes in __slots__.
        stack.extend(getattr(item, name) for name in getattr(type(item), "__slots__", ()))
    return names


def _name(part: ast.String) -> str:
    return (part.sval or "").lower()


__all__ = [
    "REFUSED_FUNCTIONS",
    "REFUSED_FUNCTION_PREFIXES",
    "Refused",
    "check_explain",
    "check_read",
    "check_write",
    "refused_function_reason",
]
