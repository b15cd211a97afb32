"""One attempt's lifecycle on a checked-out connection, the same for every kind of request.

``execute``, ``transaction`` and ``connection`` each run their work inside an
:class:`Attempt`::

    with Attempt(runtime, checkout, request, deadline_s=...) as conn:
        ...  # run the statement(s)

Entering arms the query watchdog; leaving disarms it, closes the connection if the
request left session state on it (or resets a raw connection's session), gives it back
to its pool, and records the outcome: the server answered (a result or an SQL error: the
endpoint is alive) or the connection was lost (counts against the endpoint's circuit).
Leaving never swallows an exception: the caller decides what it means (retry, QueryError,
WriteOutcomeUnknown), and reads :attr:`Attempt.lost` to know which kind it was.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import psycopg

from endpoints.core.errortext import first_line
from endpoints.core.retry import CircuitBreaker
from endpoints.routing.pools import EndpointPool, Lease, watchdog
from endpoints.routing.statements import connection_lost, restore_session
from endpoints.routing.stats import ClusterRuntime
from endpoints.routing.topology import EndpointView

# How long past its statement timeout a query may go unanswered before the watchdog cuts
# its connection: the server cancels at the timeout itself, unless it is hung.
WATCHDOG_GRACE_S = 2.0
_DEFAULT_STATEMENT_TIMEOUT_MS = 30_000


def deadline_s(endpoint: EndpointView, timeout_ms: int | None) -> float:
    """How long the watchdog lets one statement run on ``endpoint`` before cutting it."""
    if timeout_ms is None and endpoint.connection is not None:
        timeout_ms = endpoint.connection.statement_timeout_ms
    return (timeout_ms or _DEFAULT_STATEMENT_TIMEOUT_MS) / 1000 + WATCHDOG_GRACE_S


@dataclass(slots=True)
class RequestProgress:
    """One call's progress through its attempts."""

    cluster: str
    kind: str
    read_preference: str
    attempts: int = 0
    # Endpoints that failed this request, and why (shown if nothing else works).
    failed: dict[str, str] = field(default_factory=dict)
    # Endpoints ruled out for this request only, e.g. behind the requested LSN.
    ruled_out: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)


@dataclass(slots=True)
class Checkout:
    """An endpoint chosen for one attempt, and the connection leased from its pool."""

    endpoint: EndpointView
    pool: EndpointPool
    lease: Lease
    breaker: CircuitBreaker
    retry: bool

    @property
    def conn(self) -> psycopg.Connection[Any]:
        return self.lease.conn


class Attempt:
    """Arm the watchdog, run, discard or reset the session, release, record: see module doc.

    ``discard``: close the connection instead of reusing it (the statement left session
    state: SET, LISTEN, a session lock). ``restore``: reset what a raw-connection caller
    may have changed. ``deadline_s`` None: no watchdog (a raw connection without a timeout).
    """

    __slots__ = (
        "_checkout",
        "_deadline_s",
        "_discard",
        "_request",
        "_restore",
        "_runtime",
        "_started",
        "elapsed_ms",
        "lost",
    )

    def __init__(
        self,
        runtime: ClusterRuntime,
        checkout: Checkout,
        request: RequestProgress,
        *,
        deadline_s: float | None,
        discard: bool = False,
        restore: bool = False,
    ) -> None:
        self._runtime = runtime
        self._checkout = checkout
        self._request = request
        self._deadline_s = deadline_s
        self._discard = discard
        self._restore = restore
        self._started = 0.0
        self.elapsed_ms = 0.0
        self.lost = False

    def __enter__(self) -> psycopg.Connection[Any]:
        conn = self._checkout.lease.conn
        if self._deadline_s is not None:
            watchdog.arm(conn, self._deadline_s)
        self._started = time.perf_counter()
        return conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.elapsed_ms = (time.perf_counter() - self._started) * 1000
        checkout = self._checkout
        conn = checkout.lease.conn
        if self._deadline_s is not None:
            watchdog.disarm(conn)
        if exc is not None:
            self.lost = isinstance(exc, psycopg.Error) and connection_lost(conn, exc)
        else:
            # A raw-connection caller may have caught the error itself.
            self.lost = conn.broken
        if self._restore:
            restore_session(conn)
        elif self._discard:
            conn.close()  # the pool replaces it: no state leaks to others
        checkout.lease.release()
        if self.lost:
            cause = first_line(exc) if exc is not None else "the connection broke"
            record_lost(self._runtime, checkout, self.elapsed_ms, self._request, cause)
        else:
            # The server answered (a result or an SQL error): the endpoint is alive.
            checkout.breaker.record_success()
            self._runtime.record(
                checkout.endpoint.name, self.elapsed_ms, error=False, retry=checkout.retry
            )


def record_lost(
    runtime: ClusterRuntime,
    checkout: Checkout,
    elapsed_ms: float,
    request: RequestProgress,
    error: str,
) -> None:
    cause = f"connection lost: {error}"
    runtime.connection_failed(checkout.endpoint.name, cause)
    runtime.record(checkout.endpoint.name, elapsed_ms, error=True, retry=checkout.retry)
    request.failed[checkout.endpoint.name] = cause
