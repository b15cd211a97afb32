"""Parse SQL with PostgreSQL's own parser (pglast) and walk the parse tree, safely for any input.

Contract: :func:`parse_statements` returns pglast's raw statements or raises what pglast
raises (``ParseError`` and friends), and never overflows the C stack however deeply the SQL
nests: long SQL is parsed on a helper thread whose stack is sized for it. :func:`iter_nodes`
yields every node under a statement, depth first, in source order, without recursion (SQL
can nest deeper than Python's recursion limit). The classifier and the SQL guard walk trees
with it, so both see the same nodes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from pglast import ast
from pglast.parser import parse_sql

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


def parse_statements(sql: str) -> tuple[ast.RawStmt, ...]:
    """``sql``'s top-level statements as pglast parses them, on a large enough stack."""
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
    reads first.
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


def iter_nodes(top: ast.Node) -> Iterator[Any]:
    """Every node under (and including) ``top``, depth first, in source order.

    A node's children are looked up after the caller has seen the node, from the
    attributes :func:`child_attributes` names; leaves (constants, column and relation
    references) are yielded but not entered.
    """
    known = CHILD_ATTRIBUTES
    # An explicit stack, not recursion. Any: items are nodes, tuples or scalars, told apart
    # by their exact class.
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
        yield item
        for name in reversed(attributes):
            value = getattr(item, name)
            if value is not None:
                push(value)


__all__ = ["CHILD_ATTRIBUTES", "child_attributes", "iter_nodes", "parse_statements"]
