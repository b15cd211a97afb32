"""What a caller asks of one routed statement, checked once at the edge.

:class:`ExecuteOptions` carries ``routing.execute``'s keyword arguments to the router;
:meth:`ExecuteOptions.check` refuses nonsense (a negative timeout, a read-only write)
with a message that says what is accepted. The helpers check SQL text, statements of a
transaction and a read preference the same way for every entry point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from endpoints.core.vocabulary import Intent, ReadPreference, values
from endpoints.routing.topology import ClusterView

_INTENTS = frozenset(Intent)
_READ_PREFERENCES = frozenset(ReadPreference)


@dataclass(frozen=True, slots=True)
class ExecuteOptions:
    """How to run one statement (see :func:`endpoints.routing.execute` for each one)."""

    intent: str = Intent.AUTO
    read_preference: str | None = None
    timeout_ms: int | None = None
    max_rows: int | None = None
    min_lsn: str | None = None
    read_only: bool = False
    max_bytes: int | None = None

    def check(self) -> None:
        check_limits(self.timeout_ms, self.max_rows)
        max_bytes = self.max_bytes
        if max_bytes is not None and (
            isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1
        ):
            raise ValueError(f"max_bytes must be a positive integer, not {max_bytes!r}")
        if self.intent not in _INTENTS:
            raise ValueError(
                f"intent must be one of {', '.join(values(Intent))}, not {self.intent!r}"
            )
        if self.read_only and self.intent == Intent.WRITE:
            raise ValueError("read_only=True cannot run a statement meant to write")


DEFAULT_OPTIONS = ExecuteOptions()
# The plain calls (an intent at most, no other option), checked once: the facade passes
# these rather than building and checking options on every call, and the router caches
# its per-statement decisions for them (see Router.execute).
PLAIN_OPTIONS: dict[str, ExecuteOptions] = {
    Intent.AUTO: DEFAULT_OPTIONS,
    Intent.READ: ExecuteOptions(intent=Intent.READ),
    Intent.WRITE: ExecuteOptions(intent=Intent.WRITE),
}


def check_sql(sql_text: str) -> None:
    if not isinstance(sql_text, str):
        raise TypeError(f"sql must be a string, not {type(sql_text).__name__}")
    if not sql_text or sql_text.isspace():
        raise ValueError("sql is empty")


def check_limits(timeout_ms: int | None, max_rows: int | None) -> None:
    if timeout_ms is not None and (not isinstance(timeout_ms, int) or timeout_ms <= 0):
        raise ValueError(f"timeout_ms must be a positive integer, not {timeout_ms!r}")
    if max_rows is not None and (not isinstance(max_rows, int) or max_rows < 0):
        raise ValueError(f"max_rows must be a non-negative integer, not {max_rows!r}")


def read_preference(requested: str | None, view: ClusterView) -> str:
    """The request's read preference: the cluster's own unless one is named."""
    if requested is None:
        return view.read_preference
    if requested not in _READ_PREFERENCES:
        raise ValueError(
            f"read_preference must be one of {', '.join(values(ReadPreference))}, not {requested!r}"
        )
    return requested


def statement(item: Any, index: int) -> tuple[str, Any]:
    """One statement of a transaction: ``(sql, params)`` or a bare SQL string."""
    if isinstance(item, str):
        text, params = item, None
    else:
        try:
            text, params = item
        except (TypeError, ValueError):
            raise ValueError(
                f"statement {index + 1}: expected (sql, params) or a SQL string"
            ) from None
    check_sql(text)
    return text, params
