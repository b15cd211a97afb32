"""How a failure becomes text: one line, with its SQLSTATE, never with a secret.

Error messages reach logs, the admin, HTTP answers and an assistant. They are built
here, so every one is redacted the same way (:func:`endpoints.core.crypto.redact`).
"""

from __future__ import annotations

from endpoints.core.crypto import redact


def with_sqlstate(message: str, sqlstate: str | None, *, on: str | None = None) -> str:
    """``message (SQLSTATE xxxxx, on ENDPOINT)``, leaving out what is unknown.

    The message alone when there is neither a SQLSTATE nor an endpoint.
    """
    facts = [f"SQLSTATE {sqlstate}"] if sqlstate else []
    if on:
        facts.append(f"on {on}")
    return f"{message} ({', '.join(facts)})" if facts else message


def first_line(exc: BaseException, *secrets: str) -> str:
    """The first line of ``exc``'s message (its type's name when empty), redacted.

    For messages whose later lines are detail nobody needs in one line (libpq repeats
    "connection to server at ... failed" before the cause; tracebacks of wrapped errors).
    """
    text = str(exc).strip()
    line = text.splitlines()[0].strip() if text else type(exc).__name__
    return redact(line, *secrets)


def one_line(exc: BaseException, *secrets: str) -> str:
    """All of ``exc``'s message on one line, with its SQLSTATE when it has one, redacted."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    return redact(with_sqlstate(message, getattr(exc, "sqlstate", None)), *secrets)
