"""Decide whether SQL sent by an assistant may run, as a read or as a write.

:func:`check_read` admits one statement that :func:`endpoints.core.classify.classify` calls a
read; :func:`check_write` admits one statement that is not transaction control, session state
or ``ALTER SYSTEM``; :func:`check_explain` decides how ``EXPLAIN [ANALYZE]`` of a statement may
run. All three refuse ``COPY`` and every name in :data:`REFUSALS` (the table lives in
:mod:`endpoints.services.refusals` and is re-exported here), wherever it appears in the
statement: calls of functions (files, other servers, server control, SQL hidden in strings,
effects a rollback does not undo), references to relations that hold secrets (password
verifiers, connection strings, sampled column values) and reads of settings whose values hold
secrets or name server files (``SHOW name``, ``current_setting('name')``, ``SHOW ALL``).
Anything refused raises :class:`Refused`, whose message says why in one sentence.

The secrets are refused whatever the role: ``pg_read_all_data`` grants SELECT on the system
catalogs too, so even a least-privilege role could read ``pg_authid``. This is defence in
depth, not a sandbox: it reads only the SQL text, so a view or function that reads a refused
relation is not seen (and a role that may write can create one).

This is the first line only: reads also run in a ``READ ONLY`` transaction that is rolled back
(see :func:`endpoints.routing.execute`), which catches writes hidden in views or user functions.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from pglast import ast

from endpoints.core.classify import (
    CACHE_SIZE,
    CACHED_MAX_CHARS,
    Classification,
    Kind,
    classify,
    is_write_function,
    to_server_placeholders,
)

# parse_statements runs deeply nested SQL on a thread with a large enough stack; the top-level
# statement type is not part of Classification, so it is parsed here again.
from endpoints.core.sqltree import iter_nodes, parse_statements
from endpoints.routing import RoutingError
from endpoints.services.refusals import (
    REFUSALS,
    REFUSED_FUNCTION_PREFIXES,
    REFUSED_FUNCTION_REASONS,
    REFUSED_FUNCTIONS,
    REFUSED_RELATIONS,
    REFUSED_SETTINGS,
    Refusal,
    RefusalKind,
    refused_function_reason,
    refused_relation_reason,
    refused_setting_reason,
)

# current_setting() reads the setting named by its first argument.
_CURRENT_SETTING = "current_setting"

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
    """:func:`_check_read`, remembered for statements that pass."""
    return _check_read(sql, has_params)


def _check_read(sql: str, has_params: bool) -> Classification:
    """:func:`check_read` without the cache."""
    classification, stmt = _one_statement(sql, has_params)
    names = _check_refusals(classification, stmt)
    if isinstance(stmt, ast.CopyStmt):
        raise Refused("refused: COPY is not supported through query; use SELECT")
    reason = _write_reason(classification, names.attributes)
    if reason is not None:
        raise Refused(f"refused: {reason}; {_READ_ONLY_HINT}")
    return classification


def check_write(sql: str, *, has_params: bool = False) -> Classification:
    """``sql``'s classification if it is one statement allowed to write; else :class:`Refused`."""
    classification, stmt = _one_statement(sql, has_params)
    _check_refusals(classification, stmt)
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

    ``sql`` must be one statement of a kind EXPLAIN accepts, not itself an EXPLAIN, using no
    refused name. Without ``analyze`` it is only planned, which reads whatever it is.
    With ``analyze`` it runs: a statement that writes is refused unless ``allow_writes``, and
    then ``"write"`` means it must run on the primary in a transaction that is rolled back.
    Refused relations are refused even without ``analyze``: row counts and timings of
    ``EXPLAIN ANALYZE`` would leak them, and refusing the plan too is simpler and harmless.
    """
    classification, stmt = _one_statement(sql, has_params)
    if isinstance(stmt, ast.ExplainStmt):
        raise Refused("refused: the statement is already an EXPLAIN; pass the statement itself")
    names = _check_refusals(classification, stmt)
    if not isinstance(stmt, _EXPLAINABLE):
        raise Refused(
            "refused: EXPLAIN takes only SELECT, VALUES, TABLE, INSERT, UPDATE, DELETE, MERGE "
            f"or CREATE TABLE AS ({classification.reason})"
        )
    reason = _write_reason(classification, names.attributes) if analyze else None
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


def _check_refusals(classification: Classification, stmt: ast.Node) -> _Names:
    """Refuse what :data:`REFUSALS` names anywhere in ``stmt``, ``SHOW ALL`` and ``ALTER SYSTEM``.

    Returns what the walk of the tree found, for the caller's further checks.
    """
    names = _collect_names(stmt)
    _check_functions(classification, names)
    for relation in names.relations:
        reason = REFUSED_RELATIONS.get(relation)
        if reason is not None:
            raise Refused(f"refused: {relation} {reason}")
    for setting in names.settings:
        _check_setting(setting)
    if isinstance(stmt, ast.VariableShowStmt) and (stmt.name or "").lower() == "all":
        raise Refused(
            "refused: SHOW ALL shows every setting, secrets included; use SHOW name for one setting"
        )
    if isinstance(stmt, ast.AlterSystemStmt):
        raise Refused(
            "refused: ALTER SYSTEM changes the server's configuration (primary_conninfo, "
            "archive_command...), which is the operator's job"
        )
    return names


def _check_functions(classification: Classification, names: _Names) -> None:
    """Refuse calls of refused functions, in call or attribute notation."""
    # The walk's calls first, outermost and leftmost first, so that the message names the
    # function the statement is about; then classify's, which saw the same calls.
    for name in (*names.calls, *sorted(classification.functions)):
        reason = refused_function_reason(name)
        if reason is not None:
            raise Refused(f"refused: {name.rpartition('.')[2]}() {reason}")
    for attribute in names.attributes:
        # Exact names only (not the prefix families): ordinary columns are called lo_something.
        reason = REFUSED_FUNCTION_REASONS.get(attribute)
        if reason is None and attribute == _CURRENT_SETTING:
            reason = "reads a setting that cannot be checked"
        if reason is not None:
            raise Refused(f"refused: {_attribute_call(attribute)}, which {reason}")


def _check_setting(setting: str | None) -> None:
    """Refuse reading ``setting`` (None: a name computed at run time) by SHOW/current_setting."""
    if setting is None:
        raise Refused(
            "refused: current_setting() of anything but a string constant reads a setting that "
            "cannot be checked; name the setting in a string"
        )
    reason = refused_setting_reason(setting)
    if reason is not None:
        raise Refused(f"refused: the setting {setting.strip()} {reason}")


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
    """How a message describes a call in attribute notation."""
    # PostgreSQL reads ``x.f`` and ``(x).f`` as ``f(x)`` when x has no column f, for any
    # one-argument function: ``SELECT x.pg_read_file FROM CAST('/etc/passwd' AS text) x``
    # reads the file, yet the parse tree holds no function call, so classify() misses it.
    return f".{name} calls {name}() in attribute notation (x.{name} means {name}(x))"


@dataclass(slots=True)
class _Names:
    """What matters to the refusals in one statement's parse tree, lower case, in source order."""

    # Unqualified names of the functions called (outer calls before their arguments).
    calls: list[str] = field(default_factory=list)
    # Names after a dot in column references: ``b`` in ``a.b`` and ``(a).b``.
    attributes: list[str] = field(default_factory=list)
    # Unqualified names of the relations referred to (RangeVar: FROM, JOIN, TABLE, targets).
    relations: list[str] = field(default_factory=list)
    # Settings read by SHOW or current_setting(); None where current_setting()'s argument is
    # not a string constant.
    settings: list[str | None] = field(default_factory=list)


def _collect_names(top: ast.Node) -> _Names:
    """One walk of the tree under ``top``: the calls, attributes, relations and settings."""
    names = _Names()
    for node in iter_nodes(top):
        cls = type(node)
        if cls is ast.ColumnRef:
            names.attributes.extend(_attribute_parts((node.fields or ())[1:]))
        elif cls is ast.RangeVar:
            names.relations.append((node.relname or "").lower())
        elif cls is ast.FuncCall:
            _note_call(node, names)
        elif cls is ast.A_Indirection:
            names.attributes.extend(_attribute_parts(node.indirection or ()))
        elif cls is ast.VariableShowStmt:
            names.settings.append((node.name or "").lower())
    return names


def _attribute_parts(parts: tuple[Any, ...]) -> list[str]:
    """The lower-case names among the parts of a column reference or indirection."""
    return [_name(part) for part in parts if isinstance(part, ast.String)]


def _note_call(call: ast.FuncCall, names: _Names) -> None:
    """Note a call's name and, for current_setting(), the setting it reads."""
    parts = call.funcname or ()
    if not parts or not isinstance(parts[-1], ast.String):  # pragma: no cover - always named
        return
    name = _name(parts[-1])
    names.calls.append(name)
    if name == _CURRENT_SETTING:
        names.settings.append(_constant_string(call.args[0] if call.args else None))


def _constant_string(node: object) -> str | None:
    """The value of a string constant, possibly cast (``'x'::text``); None for anything else."""
    while isinstance(node, ast.TypeCast):
        node = node.arg
    if isinstance(node, ast.A_Const) and not node.isnull and isinstance(node.val, ast.String):
        return (node.val.sval or "").lower()
    return None


def _name(part: ast.String) -> str:
    """A name part of the parse tree, lower case."""
    return (part.sval or "").lower()


__all__ = [
    "REFUSALS",
    "REFUSED_FUNCTIONS",
    "REFUSED_FUNCTION_PREFIXES",
    "REFUSED_RELATIONS",
    "REFUSED_SETTINGS",
    "Refusal",
    "RefusalKind",
    "Refused",
    "check_explain",
    "check_read",
    "check_write",
    "refused_function_reason",
    "refused_relation_reason",
    "refused_setting_reason",
]
