"""The verdict for one top-level SQL statement: read or write, and why, in one sentence.

Contract: :func:`classify_statement` takes a statement node and the :class:`TreeFacts` that
:func:`collect_facts` found under it, and returns ``(kind, reason)``; nothing is a read unless
a rule below says so (SELECT, VALUES, TABLE, SHOW, EXPLAIN, COPY TO STDOUT), and a call of a
write function anywhere makes it a write. :func:`statement_label` names the SQL command a node
stands for ("DROP TABLE"), and :func:`outside_transaction` says whether PostgreSQL refuses
the statement inside a transaction block. The rules themselves are listed in
:mod:`endpoints.core.classify`, the public entry point.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from pglast import ast
from pglast.enums import (
    LockClauseStrength,
    ObjectType,
    ReindexObjectType,
    TransactionStmtKind,
    VariableSetKind,
)

from endpoints.core.classify_tables import is_known_read_only_call, is_write_function
from endpoints.core.sqltree import iter_nodes

Kind = Literal["read", "write"]


@dataclass(slots=True)
class TreeFacts:
    """What the walk found below (and including) one statement node."""

    # Every FuncCall's lower-case name parts, in source order, e.g. ("pg_catalog", "nextval").
    calls: list[tuple[str, ...]] = field(default_factory=list)
    # Data-modifying statements below the top node (writable CTEs, COPY (INSERT ...) TO).
    data_modifying: list[ast.Node] = field(default_factory=list)
    locking_strength: LockClauseStrength | None = None
    has_into: bool = False


DATA_MODIFYING = (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)


def collect_facts(top: ast.Node) -> TreeFacts:
    """Visit every node under ``top`` (depth first, source order) and note what matters."""
    facts = TreeFacts()
    for node in iter_nodes(top):
        cls = type(node)
        if cls is ast.FuncCall:
            facts.calls.append(tuple((part.sval or "").lower() for part in node.funcname or ()))
        elif cls in DATA_MODIFYING:
            if node is not top:
                facts.data_modifying.append(node)
        elif cls is ast.LockingClause:
            if facts.locking_strength is None:
                facts.locking_strength = node.strength
        elif cls is ast.IntoClause:
            facts.has_into = True
    return facts


_LOCK_CLAUSES = {
    LockClauseStrength.LCS_FORKEYSHARE: "FOR KEY SHARE",
    LockClauseStrength.LCS_FORSHARE: "FOR SHARE",
    LockClauseStrength.LCS_FORNOKEYUPDATE: "FOR NO KEY UPDATE",
    LockClauseStrength.LCS_FORUPDATE: "FOR UPDATE",
}


def classify_statement(stmt: ast.Node, facts: TreeFacts, strict: bool) -> tuple[Kind, str]:
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


def _classify_select(stmt: ast.SelectStmt, facts: TreeFacts) -> tuple[Kind, str]:
    if facts.data_modifying:
        label = statement_label(facts.data_modifying[0])
        return ("write", f"{label} in a WITH clause modifies data")
    if facts.locking_strength is not None:
        clause = _LOCK_CLAUSES.get(facts.locking_strength, "FOR UPDATE")
        return ("write", f"SELECT ... {clause} takes row locks")
    if facts.has_into:
        return ("write", "SELECT INTO creates a table")
    if stmt.valuesLists and not stmt.fromClause:
        return ("read", "VALUES only reads")
    return ("read", "SELECT only reads")


def _classify_copy(stmt: ast.CopyStmt, facts: TreeFacts) -> tuple[Kind, str]:
    if stmt.is_from:
        return ("write", "COPY FROM loads data")
    if stmt.is_program or stmt.filename is not None:
        return ("write", "COPY TO a server file or program has side effects on the server")
    if isinstance(stmt.query, DATA_MODIFYING):
        return ("write", f"COPY ({statement_label(stmt.query)}) modifies data")
    if isinstance(stmt.query, ast.SelectStmt):
        kind, reason = _classify_select(stmt.query, facts)
        if kind == "write":
            return (kind, reason)
    return ("read", "COPY TO STDOUT only reads")


def _classify_explain(stmt: ast.ExplainStmt, facts: TreeFacts, strict: bool) -> tuple[Kind, str]:
    query = stmt.query
    if isinstance(query, ast.ExecuteStmt):
        return ("write", "EXPLAIN EXECUTE needs the prepared statement of a primary session")
    if not _explain_analyzes(stmt):
        return ("read", "EXPLAIN without ANALYZE plans the statement but does not run it")
    if query is None:
        return ("write", "EXPLAIN ANALYZE of an unknown statement")
    kind, reason = classify_statement(query, facts, strict)
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


def statement_label(stmt: ast.Node) -> str:
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
SESSION_CHANGING = (
    *_SESSION_STATE,
    ast.VariableSetStmt,
    ast.ListenStmt,
    ast.UnlistenStmt,
    ast.TransactionStmt,
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
    label = statement_label(stmt)
    if isinstance(stmt, (*DATA_MODIFYING, ast.TruncateStmt)):
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


def outside_transaction(stmt: ast.Node | None) -> bool:
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


__all__ = [
    "DATA_MODIFYING",
    "SESSION_CHANGING",
    "Kind",
    "TreeFacts",
    "classify_statement",
    "collect_facts",
    "outside_transaction",
    "statement_label",
]
