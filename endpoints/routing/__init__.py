"""The routing service: every request to a managed cluster goes through here.

The same code runs in the web process, the Celery worker and the MCP server::

    from endpoints import routing

    result = routing.execute("orders", "SELECT id, total FROM orders WHERE id = %s", [42])
    result.rows        # [{"id": 42, "total": Decimal("9.90")}]
    result.endpoint    # "replica1": a read, so it went to a replica

    routing.execute("orders", "UPDATE orders SET paid = true WHERE id = %s", [42])  # primary
    routing.transaction("orders", [(sql1, params1), (sql2, params2)])
    with routing.connection("orders", intent="write", timeout_ms=5000) as conn:  # raw driver
        ...
    routing.stats("orders").totals.requests

Each request: classify the SQL (:mod:`endpoints.core.classify`, PostgreSQL's own
parser, cached), choose the eligible endpoints (:func:`balancing.select_eligible`:
role, read preference, lag bound, circuit breaker, weight), let the cluster's
strategy pick one, take a connection from its pool (:mod:`endpoints.routing.pools`),
run (:mod:`endpoints.routing.statements`), and on a connection failure retry
elsewhere by the cluster's retry policy (:mod:`endpoints.core.retry`).

What is retried: failing to obtain or open a connection, and reads whose
connection failed. A write whose statement may have reached the server is
never retried: it raises :class:`WriteOutcomeUnknown`. SQL errors are never
retried, with two exceptions that cannot duplicate anything: a read cancelled
on a replica by a recovery conflict is retried elsewhere, and a statement the
parser took for a read that a replica refuses as a write (SQLSTATE 25006, e.g.
a user function that writes) is sent once to the primary.

This module is the facade: the functions below, the errors, :class:`QueryResult` and
the stats types. The parts live beside it: ``router`` (choosing and retrying),
``attempt`` (one attempt's lifecycle), ``statements``/``cursors``/``results`` (running a
statement), ``stats``, ``errors``, ``options``, ``pools`` and ``topology``.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Literal

import psycopg

from endpoints.core.purposes import OPERATIONS, AssistantLimits, Purpose
from endpoints.core.vocabulary import Intent
from endpoints.routing import pools as pools_module
from endpoints.routing.attempt import WATCHDOG_GRACE_S
from endpoints.routing.errors import (
    ClusterNotFound,
    NoEndpointAvailable,
    QueryError,
    RoutingError,
    WriteOutcomeUnknown,
)
from endpoints.routing.options import PLAIN_OPTIONS, ExecuteOptions
from endpoints.routing.pools import PoolRegistry, PoolStats
from endpoints.routing.results import ExtendedCursor, QueryResult, extended_cursor
from endpoints.routing.router import Router
from endpoints.routing.stats import (
    LATENCY_BUCKETS_MS,
    ClusterRouting,
    ClusterRuntime,
    EndpointRouting,
    EndpointStats,
    RoutingTotals,
    StatsSnapshot,
)
from endpoints.routing.topology import PurposeTopology, Topology, on_local_change

# What callers may pass as an intent: a member of the vocabulary or its string.
IntentName = Intent | Literal["auto", "read", "write"]

# The process-wide routers (one per purpose)

_router: Router | None = None
# Assistant purposes' routers, created on first use; they share the operations router's
# topology (one snapshot, one Redis check) and have pools of their own.
_purpose_routers: dict[str, Router] = {}
_router_lock = threading.Lock()
_listening = False


def get_router(purpose: Purpose = OPERATIONS) -> Router:
    """This process's router for ``purpose`` (operations unless named), created on first use."""
    global _router, _listening
    router = _router if not purpose.assistant else _purpose_routers.get(purpose.name)
    if router is not None:
        return router
    with _router_lock:
        if _router is None:
            _router = Router(Topology(), pools_module.registry)
            if not _listening:
                on_local_change(_invalidate_local)
                _listening = True
        if not purpose.assistant:
            return _router
        router = _purpose_routers.get(purpose.name)
        if router is None:
            base = _router.topology
            assert isinstance(base, Topology)
            router = Router(
                PurposeTopology(base, purpose, assistant_limits),
                PoolRegistry(),
                purpose=purpose,
            )
            _purpose_routers[purpose.name] = router
        return router


def assistant_limits() -> AssistantLimits:
    """The PGWARDEN_MCP_* limits every assistant session carries."""
    from django.conf import settings

    return _limits(settings.PGWARDEN_MCP_MAX_TIMEOUT_MS, settings.PGWARDEN_MCP_LOCK_TIMEOUT_MS)


@functools.lru_cache(maxsize=8)
def _limits(max_timeout_ms: int, lock_timeout_ms: int) -> AssistantLimits:
    # Read on every assistant call (the timeout's bound): built once per pair of values.
    return AssistantLimits(max_timeout_ms=max_timeout_ms, lock_timeout_ms=lock_timeout_ms)


def _invalidate_local() -> None:
    if _router is not None:
        _router.topology.invalidate()


def _forget_router_after_fork() -> None:
    # A forked child (gunicorn, Celery prefork) must not share the parent's Redis socket
    # or snapshot lock; the pool registry forgets the parent's pools on its own, and the
    # assistant routers' registries go with their routers.
    global _router, _router_lock, _purpose_routers
    _router = None
    _purpose_routers = {}
    _router_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_router_after_fork)


def reset_router() -> None:
    """Close every pool and forget the snapshot (tests; after settings change)."""
    global _router
    with _router_lock:
        for router in _purpose_routers.values():
            router.close()
        _purpose_routers.clear()
        if _router is not None:
            _router.close()
        _router = None


def current_router() -> Router | None:
    """This process's router if anything was routed yet, else None (and none is created)."""
    return _router


# The module-level API


def execute(
    cluster: str,
    sql: str,
    params: Sequence[Any] | dict[str, Any] | None = None,
    *,
    intent: IntentName = Intent.AUTO,
    read_preference: str | None = None,
    timeout_ms: int | None = None,
    max_rows: int | None = None,
    min_lsn: str | None = None,
    read_only: bool = False,
    max_bytes: int | None = None,
    purpose: Purpose = OPERATIONS,
) -> QueryResult:
    """Run one SQL string on the endpoint the routing rules choose.

    ``intent="auto"`` classifies the SQL with PostgreSQL's parser; ``"read"`` or
    ``"write"`` overrides it. ``max_rows`` caps the rows returned (``truncated``
    says so); ``timeout_ms`` bounds it on the server; ``min_lsn`` (from a write's
    result) keeps the read off replicas that have not replayed that write.
    ``read_only=True`` runs it in a ``READ ONLY`` transaction that is always rolled
    back, so the server itself refuses any write the classifier could not see (a
    function that writes, called by a view). ``max_bytes`` (a read-only SELECT) stops
    the server once the rows' text passes that many bytes (``truncated``). ``purpose``
    picks the role: operations (the endpoints' own users) unless an assistant's.
    """
    router = _router if not purpose.assistant else None
    if router is None:
        router = get_router(purpose)
    options = None
    if (
        read_preference is None
        and timeout_ms is None
        and max_rows is None
        and min_lsn is None
        and not read_only
        and max_bytes is None
        and isinstance(intent, str)
    ):
        options = PLAIN_OPTIONS.get(intent)  # the usual call: no options object to build
    if options is None:
        options = ExecuteOptions(
            intent=intent,
            read_preference=read_preference,
            timeout_ms=timeout_ms,
            max_rows=max_rows,
            min_lsn=min_lsn,
            read_only=read_only,
            max_bytes=max_bytes,
        )
    return router.execute(cluster, sql, params, options)


def transaction(
    cluster: str,
    statements: Sequence[tuple[str, Sequence[Any] | dict[str, Any] | None]],
    *,
    read_only: bool = False,
    read_preference: str | None = None,
    timeout_ms: int | None = None,
    purpose: Purpose = OPERATIONS,
) -> list[QueryResult]:
    """Run ``statements`` on one connection in one transaction: all or nothing.

    On the primary unless ``read_only`` (then by read preference, in a READ ONLY
    transaction). Commits on success, rolls back on any error.
    """
    return get_router(purpose).transaction(
        cluster,
        statements,
        read_only=read_only,
        read_preference=read_preference,
        timeout_ms=timeout_ms,
    )


def connection(
    cluster: str,
    *,
    intent: Intent | Literal["read", "write"] = Intent.READ,
    read_preference: str | None = None,
    timeout_ms: int | None = None,
    purpose: Purpose = OPERATIONS,
) -> AbstractContextManager[psycopg.Connection[Any]]:
    """A pooled psycopg connection (autocommit) for callers that need the raw driver.

    Session changes (SET, an open transaction) are undone when it goes back to the pool.
    ``timeout_ms`` bounds each statement on the server (the session's statement_timeout)
    and, should the server stop answering, the whole use of the connection: the query
    watchdog cuts it ``timeout_ms`` plus :data:`WATCHDOG_GRACE_S` after it was handed out.
    """
    return get_router(purpose).connection(
        cluster, intent=intent, read_preference=read_preference, timeout_ms=timeout_ms
    )


def stats(cluster: str, *, purpose: Purpose = OPERATIONS) -> ClusterRouting:
    """This process's routing statistics for ``cluster``, per endpoint and in total."""
    return get_router(purpose).stats(cluster)


__all__ = [
    "LATENCY_BUCKETS_MS",
    "WATCHDOG_GRACE_S",
    "ClusterNotFound",
    "ClusterRouting",
    "ClusterRuntime",
    "EndpointRouting",
    "EndpointStats",
    "ExtendedCursor",
    "Intent",
    "IntentName",
    "NoEndpointAvailable",
    "PoolStats",
    "QueryError",
    "QueryResult",
    "Router",
    "RoutingError",
    "RoutingTotals",
    "StatsSnapshot",
    "WriteOutcomeUnknown",
    "assistant_limits",
    "connection",
    "current_router",
    "execute",
    "extended_cursor",
    "get_router",
    "reset_router",
    "stats",
    "transaction",
]
