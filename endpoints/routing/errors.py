"""The routing service's errors: each names the cluster or endpoint, the cause and what to do.

Every message is redacted (never a password) and says what the caller can do next.
:class:`WriteOutcomeUnknown` is never retried: the write may have committed.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg

from endpoints.core.crypto import redact
from endpoints.core.errortext import with_sqlstate
from endpoints.core.vocabulary import Intent


class RoutingError(Exception):
    """Base of every error the routing service raises on purpose."""


class ClusterNotFound(RoutingError):
    def __init__(self, cluster: str, known: Sequence[str]) -> None:
        names = ", ".join(known) if known else "none is registered yet"
        super().__init__(
            f"No cluster named {cluster!r} (known clusters: {names}). Register it in the admin "
            "or with `manage.py register_cluster`."
        )
        self.cluster = cluster


class NoEndpointAvailable(RoutingError):
    """No endpoint could serve the request; ``reasons`` says why, per endpoint."""

    def __init__(self, cluster: str, intent: str, reasons: dict[str, str], attempts: int) -> None:
        self.cluster = cluster
        self.intent = intent
        self.reasons = dict(reasons)
        self.attempts = attempts
        target = "the primary (a write)" if intent == Intent.WRITE else "any endpoint for a read"
        lines = [f"  - {name}: {why}" for name, why in sorted(self.reasons.items())]
        detail = "\n".join(lines) if lines else "  (the cluster has no endpoints)"
        tries = f" after {attempts} attempt{'s' if attempts != 1 else ''}" if attempts else ""
        super().__init__(
            f"Cluster {cluster!r}: could not reach {target}{tries}.\n{detail}\n"
            "Check the endpoints' state in the admin; a failover, a restarted server or a "
            "relaxed read preference/lag bound makes one eligible again."
        )


class QueryError(RoutingError):
    """PostgreSQL refused the statement: its message and SQLSTATE, which endpoint."""

    def __init__(
        self,
        message: str,
        *,
        sqlstate: str | None,
        endpoint: str,
        detail: str | None = None,
        hint: str | None = None,
        statement_index: int | None = None,
    ) -> None:
        self.message = redact(message)
        self.sqlstate = sqlstate
        self.endpoint = endpoint
        self.detail = redact(detail) if detail else None
        self.hint = hint
        self.statement_index = statement_index
        text = with_sqlstate(self.message, sqlstate, on=endpoint)
        if statement_index is not None:
            text = f"statement {statement_index + 1}: {text}"
        if self.detail:
            text += f"\nDETAIL: {self.detail}"
        if hint:
            text += f"\nHINT: {hint}"
        super().__init__(text)

    @classmethod
    def from_psycopg(
        cls, exc: psycopg.Error, endpoint: str, statement_index: int | None = None
    ) -> QueryError:
        diag = exc.diag
        message = diag.message_primary or str(exc).strip() or type(exc).__name__
        return cls(
            message,
            sqlstate=exc.sqlstate,
            endpoint=endpoint,
            detail=diag.message_detail,
            hint=diag.message_hint,
            statement_index=statement_index,
        )


class WriteOutcomeUnknown(RoutingError):
    """The connection was lost after a write was sent: it may or may not have committed."""

    def __init__(self, cluster: str, endpoint: str, cause: str) -> None:
        self.cluster = cluster
        self.endpoint = endpoint
        self.cause = redact(cause)
        super().__init__(
            f"Cluster {cluster!r}: the connection to {endpoint} was lost after the write was "
            f"sent ({self.cause}). It may or may not have been applied, so it was not retried: "
            "check the data before running it again."
        )
