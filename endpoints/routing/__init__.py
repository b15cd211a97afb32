"""The routing service: every request to a managed cluster goes through here.

The same code runs in the web process, the Celery worker and the MCP server::

    from endpoints import routing

    result = routing.execute("orders", "SELECT id, total FROM orders WHERE id = %s", [42])
    result.rows        # [{"id": 42, "total": Decimal("9.90")}]
    result.endpoint    # "replica1": a read, so it went to a replica

    routing.execute("orders", "UPDATE orders SET paid = true WHERE id = %s", [42])  # primary
    routing.transaction("orders", [(sql1, params1), (sql2, params2)])
    with routing.connection("orders", intent="write") as conn:  # the raw psycopg driver
        ...
    routing.stats("orders")

Each request: classify the SQL (:mod:`endpoints.core.classify`, PostgreSQL's own
parser, cached), choose the eligible endpoints (:func:`balancing.select_eligible`:
role, read preference, lag bound, circuit breaker, weight), let the cluster's
strategy pick one, take a connection from its pool (:mod:`endpoints.routing.pools`),
run, and on a connection failure retry elsewhere by the cluster's retry policy
(:mod:`endpoints.core.retry`).

What is retried: failing to obtain or open a connection, and reads whose
connection failed. A write whose statement may have reached the server is
never retried: it raises :class:`WriteOutcomeUnknown`. SQL errors are never
retried, with two exceptions that cannot duplicate anything: a read cancelled
on a replica by a recovery conflict is retried elsewhere, and a statement the
parser took for a read that a replica refuses as a write (SQLSTATE 25006, e.g.
a user function that writes) is sent once to the primary.
"""

from __future__ import annotations

import functools
import os
import re
import threading
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, LiteralString

import psycopg
from psycopg import pq, sql
from psycopg._queries import PostgresQuery

from endpoints.core.balancing import Balancer, Candidate, Selection, select_eligible
from endpoints.core.classify import Classification, classify
from endpoints.core.crypto import redact
from endpoints.core.purposes import OPERATIONS, AssistantLimits, Purpose
from endpoints.core.retry import CircuitBreaker, retry_delay_s
from endpoints.routing import pools as pools_module
from endpoints.routing.pools import (
    EndpointPool,
    EndpointUnreachable,
    PoolExhausted,
    PoolRegistry,
    TrackedConnection,
    watchdog,
)
from endpoints.routing.topology import (
    ClusterView,
    EndpointView,
    PurposeTopology,
    Snapshot,
    Topology,
    on_local_change,
)

Intent = Literal["auto", "read", "write"]
INTENTS = ("auto", "read", "write")
READ_PREFERENCES = ("primary", "primary_preferred", "secondary", "secondary_preferred", "nearest")

_LATENCY_SAMPLES = 1000
_LATENCY_EWMA_ALPHA = 0.2
# Upper bounds (inclusive, ms) of the query latency histogram's buckets, exported by
# /metrics in seconds. Lower than Prometheus's defaults: a routed query on a LAN takes well
# under a millisecond. Above the last bound, a request lands in the +Inf bucket.
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000,
)  # fmt: skip
_RECOVERY_CONFLICT = "40001"
_READ_ONLY_TRANSACTION = "25006"
_CONNECTION_FAILURE = "08006"


# Errors


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
        target = "the primary (a write)" if intent == "write" else "any endpoint for a read"
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
        text = f"{self.message} (SQLSTATE {sqlstate or 'unknown'}, on {endpoint})"
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


# Results


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
    # After a write, the primary's WAL position once it committed: pass it as ``min_lsn``
    # to later reads so they only go to endpoints that have replayed it.
    lsn: str | None = None


# Per-process bookkeeping


@dataclass(frozen=True, slots=True)
class StatsSnapshot:
    """One endpoint's counters and latency histogram, read together."""

    requests: int
    errors: int
    retries: int
    # Requests the endpoint answered (results and SQL errors), per latency bucket: one
    # count per bound of LATENCY_BUCKETS_MS, then the count above the last (not cumulative).
    latency_buckets: tuple[int, ...]
    latency_sum_ms: float

    @property
    def latency_count(self) -> int:
        return sum(self.latency_buckets)


class EndpointStats:
    """Request counters and observed latency of one endpoint in this process."""

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.retries = 0
        self.latency_avg_ms: float | None = None
        self._samples: deque[float] = deque(maxlen=_LATENCY_SAMPLES)
        self._buckets = [0] * (len(LATENCY_BUCKETS_MS) + 1)
        self._latency_sum_ms = 0.0
        self._lock = threading.Lock()

    def record(self, latency_ms: float, *, error: bool = False, retry: bool = False) -> None:
        with self._lock:
            self.requests += 1
            if error:
                self.errors += 1
            if retry:
                self.retries += 1
            if latency_ms >= 0 and not error:
                self._samples.append(latency_ms)
                self._buckets[bisect_left(LATENCY_BUCKETS_MS, latency_ms)] += 1
                self._latency_sum_ms += latency_ms
                avg = self.latency_avg_ms
                self.latency_avg_ms = (
                    latency_ms if avg is None else avg + _LATENCY_EWMA_ALPHA * (latency_ms - avg)
                )

    def p95_ms(self) -> float | None:
        with self._lock:
            samples = sorted(self._samples)
        if not samples:
            return None
        return samples[min(len(samples) - 1, int(0.95 * len(samples)))]

    def snapshot(self) -> StatsSnapshot:
        """The counters and the latency histogram as of one instant (for /metrics)."""
        with self._lock:
            return StatsSnapshot(
                requests=self.requests,
                errors=self.errors,
                retries=self.retries,
                latency_buckets=tuple(self._buckets),
                latency_sum_ms=self._latency_sum_ms,
            )


class ClusterRuntime:
    """This process's balancer, circuit breakers and stats for one cluster."""

    def __init__(self, view: ClusterView) -> None:
        self.view = view
        self.balancer = Balancer(view.load_balancing)
        self.breakers: dict[str, CircuitBreaker] = {}
        self.stats: dict[str, EndpointStats] = {}
        # Observed query latency per endpoint (moving average), for response_time/nearest.
        self.latency_ms: dict[str, float] = {}
        # Selections by (intent, read preference, blocked circuits): they only change with
        # the snapshot or a circuit, so a request usually skips the eligibility rules.
        self.selections: dict[tuple[str, str, frozenset[str]], Selection] = {}
        # Endpoints whose breaker recorded a failure, so only they need looking at.
        self.suspects: set[str] = set()
        # The latest connection failure per endpoint, to explain an open circuit.
        self.last_errors: dict[str, str] = {}
        self._lock = threading.Lock()

    def update(self, view: ClusterView) -> None:
        self.selections = {}
        if view.load_balancing != self.view.load_balancing:
            self.balancer.set_strategy(view.load_balancing)
        if (view.circuit_failure_threshold, view.circuit_cooldown_s) != (
            self.view.circuit_failure_threshold,
            self.view.circuit_cooldown_s,
        ):
            for breaker in self.breakers.values():
                breaker.reconfigure(view.circuit_failure_threshold, view.circuit_cooldown_s)
        self.view = view

    def breaker(self, name: str) -> CircuitBreaker:
        breaker = self.breakers.get(name)
        if breaker is None:
            with self._lock:
                breaker = self.breakers.setdefault(
                    name,
                    CircuitBreaker(
                        self.view.circuit_failure_threshold, self.view.circuit_cooldown_s
                    ),
                )
        return breaker

    def endpoint_stats(self, name: str) -> EndpointStats:
        stats = self.stats.get(name)
        if stats is None:
            with self._lock:
                stats = self.stats.setdefault(name, EndpointStats())
        return stats

    def blocked_circuits(self) -> frozenset[str]:
        """Endpoints whose circuit refuses requests right now (cooldown not over)."""
        if not self.suspects:
            return _NONE_BLOCKED  # the usual case: no connection failure since all closed
        blocked = []
        for name in list(self.suspects):
            breaker = self.breakers[name]
            if breaker.state == "closed":
                if not breaker.snapshot()["consecutive_failures"]:
                    self.suspects.discard(name)
            elif _refusing(breaker):
                blocked.append(name)
        return frozenset(blocked) if blocked else _NONE_BLOCKED

    def connection_failed(self, name: str, error: str) -> None:
        self.breaker(name).record_failure()
        self.suspects.add(name)
        self.last_errors[name] = error

    def record(self, name: str, latency_ms: float, *, error: bool, retry: bool) -> None:
        stats = self.endpoint_stats(name)
        stats.record(latency_ms, error=error, retry=retry)
        if stats.latency_avg_ms is not None:
            self.latency_ms[name] = stats.latency_avg_ms


_NONE_BLOCKED: frozenset[str] = frozenset()


def _refusing(breaker: CircuitBreaker) -> bool:
    if breaker.state == "half_open":
        return True  # its one trial request is in flight
    return float(breaker.snapshot()["open_for_s"]) > 0  # type: ignore[arg-type]


@dataclass(slots=True)
class _Request:
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
class _Checkout:
    endpoint: EndpointView
    pool: EndpointPool
    conn: psycopg.Connection[Any]
    token: Any
    breaker: CircuitBreaker
    retry: bool


# The router


class Router:
    """Routes requests of one purpose (operations, or an assistant's) across clusters.

    An assistant router's connections use the cluster's assistant role (see
    :mod:`endpoints.core.purposes`) and send every statement over the extended query protocol,
    which carries exactly one statement: SQL text never reaches the server through the
    simple protocol, which would run everything after a ``;``.
    """

    def __init__(
        self,
        topology: Topology | PurposeTopology,
        pools: PoolRegistry,
        *,
        purpose: Purpose = OPERATIONS,
    ) -> None:
        self.topology = topology
        self.pools = pools
        self.purpose = purpose
        self.extended_only = purpose.assistant
        self._runtimes: dict[str, ClusterRuntime] = {}
        self._seen: Snapshot | None = None
        self._lock = threading.Lock()

    # Public API (module-level functions below delegate here)

    def execute(
        self,
        cluster: str,
        sql_text: str,
        params: Sequence[Any] | dict[str, Any] | None = None,
        *,
        intent: Intent = "auto",
        read_preference: str | None = None,
        timeout_ms: int | None = None,
        max_rows: int | None = None,
        min_lsn: str | None = None,
        read_only: bool = False,
        max_bytes: int | None = None,
    ) -> QueryResult:
        _check_sql(sql_text)
        if timeout_ms is not None or max_rows is not None:
            _check_limits(timeout_ms, max_rows)
        if max_bytes is not None and (
            isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1
        ):
            raise ValueError(f"max_bytes must be a positive integer, not {max_bytes!r}")
        if read_only and intent == "write":
            raise ValueError("read_only=True cannot run a statement meant to write")
        view, runtime = self._cluster(cluster)
        classification = None
        if intent == "auto":
            classification = classify(
                sql_text,
                strict=view.strict_classification,
                client_placeholders=params is not None,
            )
            kind = classification.kind
        elif intent in ("read", "write"):
            kind = intent
        else:
            raise ValueError(f"intent must be one of {', '.join(INTENTS)}, not {intent!r}")
        request = _Request(view.name, kind, _read_preference(read_preference, view))
        can_stream = max_rows is not None and _single_statement(classification)
        as_cursor = read_only and classification is not None and classification.cursor_ok
        # The byte cap is applied by the server while it produces rows: only for a cursor.
        capped = _byte_capped(sql_text, classification, max_bytes) if as_cursor else None
        facts = _facts(sql_text, params, classification, view)
        # VACUUM, CREATE INDEX CONCURRENTLY...: never inside a transaction block.
        outside = facts.outside_transaction and not read_only
        # State left on the connection (SET, LISTEN, a session lock, or the session timeout
        # an outside-transaction statement needs) must not reach the next caller.
        session = facts.session_state or outside
        want_lsn = view.has_replicas

        while True:
            checkout = self._checkout(view, runtime, request, min_lsn=min_lsn)
            endpoint = checkout.endpoint
            watchdog.arm(checkout.conn, _deadline_s(endpoint, timeout_ms))
            t0 = time.perf_counter()
            try:
                if timeout_ms is None and max_rows is None and not read_only:
                    result = _execute(
                        checkout.conn,
                        sql_text,
                        params,
                        max_rows=None,
                        stream=False,
                        extended=self.extended_only,
                    )
                else:
                    result = _run_statement(
                        checkout.conn,
                        sql_text,
                        params,
                        read=request.kind == "read" or read_only,
                        read_only=read_only,
                        timeout_ms=timeout_ms,
                        max_rows=max_rows,
                        stream=can_stream and request.kind == "read",
                        as_cursor=as_cursor,
                        outside_transaction=outside,
                        extended=self.extended_only,
                        capped=capped,
                    )
                if request.kind == "write" and want_lsn:
                    result.lsn = _current_lsn(checkout.conn)
            except psycopg.Error as exc:
                elapsed_ms = (time.perf_counter() - t0) * 1000
                if not _connection_lost(checkout.conn, exc):
                    self._answered(runtime, checkout, elapsed_ms)
                    if self._retry_query_error(view, request, checkout, exc, intent):
                        continue
                    raise QueryError.from_psycopg(exc, endpoint.name) from None
                self._lost(runtime, checkout, elapsed_ms, request, exc)
                if request.kind == "write":
                    raise WriteOutcomeUnknown(view.name, endpoint.name, _describe(exc)) from None
                continue
            finally:
                watchdog.disarm(checkout.conn)
                if session:
                    checkout.conn.close()  # the pool replaces it: no state leaks to others
                checkout.pool.release(checkout.conn, checkout.token)
            elapsed_ms = (time.perf_counter() - t0) * 1000
            self._answered(runtime, checkout, elapsed_ms)
            result.endpoint = endpoint.name
            result.role = endpoint.role
            result.attempts = request.attempts
            result.elapsed_ms = (time.perf_counter() - request.started) * 1000
            return result

    def transaction(
        self,
        cluster: str,
        statements: Sequence[tuple[str, Sequence[Any] | dict[str, Any] | None]],
        *,
        read_only: bool = False,
        read_preference: str | None = None,
        timeout_ms: int | None = None,
    ) -> list[QueryResult]:
        statements = [_statement(item, index) for index, item in enumerate(statements)]
        if not statements:
            raise ValueError("a transaction needs at least one statement")
        _check_limits(timeout_ms, None)
        view, runtime = self._cluster(cluster)
        kind = "read" if read_only else "write"
        request = _Request(view.name, kind, _read_preference(read_preference, view))
        session = any(_facts(text, params, None, view).session_state for text, params in statements)

        while True:
            checkout = self._checkout(view, runtime, request)
            conn = checkout.conn
            endpoint = checkout.endpoint
            results: list[QueryResult] = []
            committing = False
            index = 0
            # One deadline for the whole transaction: each statement's timeout, and the commit.
            watchdog.arm(conn, _deadline_s(endpoint, timeout_ms) * (len(statements) + 1))
            t0 = time.perf_counter()
            try:
                with conn.transaction(force_rollback=read_only):
                    if read_only:
                        conn.execute("SET TRANSACTION READ ONLY")
                    if timeout_ms:
                        _set_local_timeout(conn, timeout_ms)
                    for position, (text, params) in enumerate(statements):
                        index = position  # named in the error if this statement fails
                        cursor = _cursor(conn, extended=self.extended_only)
                        results.append(_fetch(cursor.execute(text, params), max_rows=None))
                    committing = True
                lsn = _current_lsn(conn) if not read_only and view.has_replicas else None
            except psycopg.Error as exc:
                elapsed_ms = (time.perf_counter() - t0) * 1000
                if not _connection_lost(conn, exc):
                    self._answered(runtime, checkout, elapsed_ms)
                    raise QueryError.from_psycopg(
                        exc, endpoint.name, None if committing else index
                    ) from None
                self._lost(runtime, checkout, elapsed_ms, request, exc)
                if read_only:
                    continue
                if committing:
                    raise WriteOutcomeUnknown(view.name, endpoint.name, _describe(exc)) from None
                raise QueryError(
                    f"connection lost before COMMIT ({_describe(exc)}): the transaction was "
                    "rolled back by the server, nothing was committed",
                    sqlstate=_CONNECTION_FAILURE,
                    endpoint=endpoint.name,
                    statement_index=index,
                ) from None
            finally:
                watchdog.disarm(conn)
                if session:
                    conn.close()  # the pool replaces it: no state leaks to others
                checkout.pool.release(conn, checkout.token)
            self._answered(runtime, checkout, (time.perf_counter() - t0) * 1000)
            elapsed_ms = (time.perf_counter() - request.started) * 1000
            for result in results:
                result.endpoint = endpoint.name
                result.role = endpoint.role
                result.attempts = request.attempts
                result.elapsed_ms = elapsed_ms
                result.lsn = lsn
            return results

    @contextmanager
    def connection(
        self,
        cluster: str,
        *,
        intent: Literal["read", "write"] = "read",
        read_preference: str | None = None,
    ) -> Iterator[psycopg.Connection[Any]]:
        if intent not in ("read", "write"):
            raise ValueError(f"intent must be 'read' or 'write', not {intent!r}")
        view, runtime = self._cluster(cluster)
        request = _Request(view.name, intent, _read_preference(read_preference, view))
        checkout = self._checkout(view, runtime, request)
        conn = checkout.conn
        t0 = time.perf_counter()
        failed = False
        try:
            yield conn
        except BaseException as exc:
            failed = isinstance(exc, psycopg.Error) and _connection_lost(conn, exc)
            raise
        finally:
            elapsed_ms = (time.perf_counter() - t0) * 1000
            if failed:
                runtime.connection_failed(checkout.endpoint.name, "connection lost")
                runtime.record(checkout.endpoint.name, elapsed_ms, error=True, retry=False)
            else:
                self._answered(runtime, checkout, elapsed_ms)
            _restore_session(conn)
            checkout.pool.release(conn, checkout.token)

    def runtimes(self) -> list[ClusterRuntime]:
        """The clusters this router has served, by name; looking creates nothing."""
        # One C-level copy, without the lock: _adopt holds it while pools close, and a
        # metrics scrape must not wait for that.
        runtimes = list(self._runtimes.values())
        return sorted(runtimes, key=lambda runtime: runtime.view.name)

    def stats(self, cluster: str) -> dict[str, Any]:
        view, runtime = self._cluster(cluster)
        blocked = runtime.blocked_circuits()
        endpoints: dict[str, Any] = {}
        totals = {"requests": 0, "errors": 0, "retries": 0}
        connections = 0
        latencies: list[float] = []
        scores: list[int] = []
        available = 0
        for endpoint in view.endpoints:
            stats = runtime.endpoint_stats(endpoint.name)
            breaker = runtime.breaker(endpoint.name)
            pool = self.pools.peek(endpoint.id)
            pool_stats = pool.stats() if pool is not None else None
            if pool_stats:
                connections += pool_stats["size"]
            is_available = (
                endpoint.takes_traffic
                and endpoint.weight > 0
                and endpoint.state != "down"
                and endpoint.name not in blocked
            )
            available += is_available
            if stats.latency_avg_ms is not None:
                latencies.append(stats.latency_avg_ms)
            if endpoint.health_score is not None:
                scores.append(endpoint.health_score)
            for key in totals:
                totals[key] += getattr(stats, key)
            endpoints[endpoint.name] = {
                "role": endpoint.role,
                "address": endpoint.address,
                "enabled": endpoint.enabled,
                "state": endpoint.state,
                "weight": endpoint.weight,
                "health_score": endpoint.health_score,
                "available": bool(is_available),
                "unusable": endpoint.unusable or None,
                "requests": stats.requests,
                "errors": stats.errors,
                "retries": stats.retries,
                "latency_avg_ms": _round(stats.latency_avg_ms),
                "latency_p95_ms": _round(stats.p95_ms()),
                "circuit": breaker.snapshot(),
                "pool": pool_stats,
            }
        return {
            "cluster": view.name,
            "load_balancing": view.load_balancing,
            "read_preference": view.read_preference,
            "topology_version": self.topology.current().version,
            "endpoints": endpoints,
            "totals": {
                **totals,
                "endpoints": len(view.endpoints),
                "available_endpoints": available,
                "average_response_ms": _round(sum(latencies) / len(latencies))
                if latencies
                else None,
                "average_health_score": _round(sum(scores) / len(scores)) if scores else None,
                "total_connections": connections,
            },
        }

    def close(self) -> None:
        self.pools.close_all()

    # Choosing and checking out

    def _cluster(self, cluster: Any) -> tuple[ClusterView, ClusterRuntime]:
        # isinstance first: getattr's default path raises and catches an AttributeError.
        name = cluster if isinstance(cluster, str) else cluster.name
        snapshot = self.topology.current()
        if snapshot is not self._seen:
            self._adopt(snapshot)
        view = snapshot.clusters.get(name)
        if view is None:
            raise ClusterNotFound(str(name), list(snapshot.clusters))
        runtime = self._runtimes.get(name)
        if runtime is None or runtime.view is not view:
            with self._lock:
                runtime = self._runtimes.get(name)
                if runtime is None:
                    runtime = self._runtimes[name] = ClusterRuntime(view)
                elif runtime.view is not view:
                    runtime.update(view)
        return view, runtime

    def _adopt(self, snapshot: Snapshot) -> None:
        with self._lock:
            if snapshot is self._seen:
                return
            self._seen = snapshot
            self.pools.sync(
                endpoint for view in snapshot.clusters.values() for endpoint in view.endpoints
            )
            for name in list(self._runtimes):
                if name not in snapshot.clusters:
                    del self._runtimes[name]

    def _checkout(
        self,
        view: ClusterView,
        runtime: ClusterRuntime,
        request: _Request,
        *,
        min_lsn: str | None = None,
    ) -> _Checkout:
        """An endpoint and a live connection to it, retrying connection failures."""
        policy = view.retry
        while True:
            if request.attempts >= policy.max_attempts:
                raise self._nothing_available(view, runtime, request)
            candidate = self._choose(view, runtime, request)
            breaker = runtime.breaker(candidate.name)
            if not breaker.allow():
                # Another request took the half-open trial a moment ago.
                request.ruled_out[candidate.name] = "circuit open (trial request in flight)"
                continue
            if request.attempts:
                time.sleep(retry_delay_s(policy, request.attempts))
            request.attempts += 1
            retry = request.attempts > 1
            endpoint = view.by_name[candidate.name]
            trial = breaker.state == "half_open"
            try:
                pool = self.pools.get(endpoint)
                conn, token = pool.acquire(trial=trial)
            except EndpointUnreachable as exc:
                runtime.connection_failed(endpoint.name, exc.detail)
                runtime.record(endpoint.name, -1, error=True, retry=retry)
                request.failed[endpoint.name] = exc.detail
                continue
            except PoolExhausted as exc:
                breaker.release()
                runtime.record(endpoint.name, -1, error=True, retry=retry)
                request.failed[endpoint.name] = exc.detail
                continue
            checkout = _Checkout(endpoint, pool, conn, token, breaker, retry)
            if min_lsn and endpoint.role == "replica" and not self._has_replayed(checkout, min_lsn):
                pool.release(conn, token)
                breaker.record_success()
                request.attempts -= 1  # not a failure: just not caught up yet
                request.ruled_out[endpoint.name] = f"has not replayed LSN {min_lsn} yet"
                continue
            return checkout

    def _choose(self, view: ClusterView, runtime: ClusterRuntime, request: _Request) -> Candidate:
        blocked = runtime.blocked_circuits()
        # Nearest depends on observed latency, which moves with every request.
        cacheable = not (
            request.ruled_out or request.failed or request.read_preference == "nearest"
        )
        key = (request.kind, request.read_preference, blocked)
        selection = runtime.selections.get(key) if cacheable else None
        if selection is None:
            candidates: Sequence[Candidate] = view.candidates
            if request.ruled_out:
                candidates = [c for c in candidates if c.name not in request.ruled_out]
            selection = select_eligible(
                candidates,
                intent=request.kind,
                read_preference=request.read_preference,
                max_lag_s=view.max_replica_lag_s,
                open_circuits=blocked,
                avoid=request.failed.keys(),
                observed_latency_ms=runtime.latency_ms,
                nearest_window_ms=view.nearest_window_ms,
            )
            if cacheable:
                runtime.selections[key] = selection
        if not selection.eligible:
            raise self._nothing_available(view, runtime, request, selection.excluded)
        eligible = selection.eligible
        if len(eligible) == 1:
            return eligible[0]  # writes, and reads pinned to one endpoint: nothing to balance
        in_use: dict[str, int] = {}
        if view.load_balancing == "least_connections":
            for candidate in selection.eligible:
                pool = self.pools.peek(view.by_name[candidate.name].id)
                in_use[candidate.name] = pool.in_use if pool is not None else 0
        return runtime.balancer.pick(
            selection.eligible, in_use=in_use, observed_latency_ms=runtime.latency_ms
        )

    def _nothing_available(
        self,
        view: ClusterView,
        runtime: ClusterRuntime,
        request: _Request,
        excluded: dict[str, str] | None = None,
    ) -> NoEndpointAvailable:
        if excluded is None:
            excluded = select_eligible(
                view.candidates,
                intent=request.kind,
                read_preference=request.read_preference,
                max_lag_s=view.max_replica_lag_s,
                open_circuits=runtime.blocked_circuits(),
                observed_latency_ms=runtime.latency_ms,
                nearest_window_ms=view.nearest_window_ms,
            ).excluded
        reasons = {**excluded, **view.unusable, **request.ruled_out, **request.failed}
        for name, reason in reasons.items():
            if reason.startswith("circuit open") and name in runtime.last_errors:
                reasons[name] = f"{reason} (last error: {runtime.last_errors[name]})"
        return NoEndpointAvailable(view.name, request.kind, reasons, request.attempts)

    def _has_replayed(self, checkout: _Checkout, min_lsn: str) -> bool:
        try:
            row = checkout.conn.execute(
                "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [min_lsn]
            ).fetchone()
        except psycopg.Error:
            return False
        return bool(row and row[0])

    # Bookkeeping after an attempt

    def _answered(self, runtime: ClusterRuntime, checkout: _Checkout, elapsed_ms: float) -> None:
        """The server answered (a result or an SQL error): the endpoint is alive."""
        checkout.breaker.record_success()
        runtime.record(checkout.endpoint.name, elapsed_ms, error=False, retry=checkout.retry)

    def _lost(
        self,
        runtime: ClusterRuntime,
        checkout: _Checkout,
        elapsed_ms: float,
        request: _Request,
        exc: BaseException,
    ) -> None:
        cause = f"connection lost: {_describe(exc)}"
        runtime.connection_failed(checkout.endpoint.name, cause)
        runtime.record(checkout.endpoint.name, elapsed_ms, error=True, retry=checkout.retry)
        request.failed[checkout.endpoint.name] = cause

    def _retry_query_error(
        self,
        view: ClusterView,
        request: _Request,
        checkout: _Checkout,
        exc: psycopg.Error,
        intent: str,
    ) -> bool:
        """Whether an SQL error is one that can be retried without duplicating anything."""
        if request.kind != "read" or checkout.endpoint.role != "replica":
            return False
        if exc.sqlstate == _RECOVERY_CONFLICT and request.attempts < view.retry.max_attempts:
            request.failed[checkout.endpoint.name] = "query cancelled by a recovery conflict"
            return True
        if exc.sqlstate == _READ_ONLY_TRANSACTION and intent == "auto":
            # The parser took it for a read (e.g. a user function that writes); the replica
            # refused it without effect, so running it once on the primary is safe.
            request.kind = "write"
            request.attempts = 0
            return True
        return False


# Running statements


def _run_statement(
    conn: psycopg.Connection[Any],
    sql_text: str,
    params: Any,
    *,
    read: bool,
    read_only: bool = False,
    timeout_ms: int | None,
    max_rows: int | None,
    stream: bool,
    as_cursor: bool = False,
    outside_transaction: bool = False,
    extended: bool = False,
    capped: str | None = None,
) -> QueryResult:
    if outside_transaction:
        # PostgreSQL refuses it in a transaction block, so the timeout is the session's:
        # the router closes this connection afterwards.
        if timeout_ms:
            conn.execute(f"SET statement_timeout = '{int(timeout_ms)}ms'".encode())
        return _execute(conn, sql_text, params, max_rows=max_rows, stream=False, extended=extended)
    if not (timeout_ms or read_only):
        return _execute(conn, sql_text, params, max_rows=max_rows, stream=stream, extended=extended)
    if read_only and as_cursor and _PIPELINE:
        if capped is not None:
            return _read_capped(conn, capped, params, timeout_ms=timeout_ms, max_rows=max_rows)
        return _read_through_cursor(
            conn, sql_text, params, timeout_ms=timeout_ms, max_rows=max_rows
        )
    # A transaction scopes the timeout (SET LOCAL) and the read-only mode (before the
    # statement, so the server refuses any write it might do); reads are rolled back, not
    # committed. BEGIN and the settings go in one round trip: psycopg's transaction()
    # would spend one on each.
    setup = "BEGIN READ ONLY" if read_only else "BEGIN"
    if timeout_ms:
        setup += f"; SET LOCAL statement_timeout = '{int(timeout_ms)}ms'"
    conn.execute(setup.encode())
    try:
        result = _execute(
            conn, sql_text, params, max_rows=max_rows, stream=stream, extended=extended
        )
    except BaseException:
        _end_transaction(conn, "ROLLBACK")
        raise
    _end_transaction(conn, "ROLLBACK" if read else "COMMIT")
    return result


# libpq 14+ (psycopg's binary package ships a newer one) sends statements as a pipeline.
_PIPELINE = psycopg.Pipeline.is_supported()
_CURSOR_NAME = "pgwarden_read"


def _read_through_cursor(
    conn: psycopg.Connection[Any],
    sql_text: str,
    params: Any,
    *,
    timeout_ms: int | None,
    max_rows: int | None,
    fetch_rows: int | None = None,
    extra_columns: int = 0,
) -> QueryResult:
    """A read-only SELECT in one network round trip, rolled back, reading max_rows + 1 rows.

    BEGIN READ ONLY, the settings, the query as a cursor, one FETCH and the ROLLBACK go to
    the server together in pipeline mode: one round trip where running them one by one
    takes three. The cursor is what keeps it bounded: the server produces at most
    max_rows + 1 rows (``fetch_rows``, when given), as many as streaming would read.
    ``extra_columns``: trailing columns of the query that are not the caller's.
    """
    if fetch_rows is None:
        fetch_rows = max_rows + 1 if max_rows is not None else None
    fetch = f"FETCH FORWARD {fetch_rows}" if fetch_rows is not None else "FETCH ALL"
    rows_cur = conn.cursor()
    try:
        with conn.pipeline():
            conn.execute(b"BEGIN READ ONLY")
            conn.execute(_cursor_settings(timeout_ms))
            conn.execute(f"DECLARE {_CURSOR_NAME} NO SCROLL CURSOR FOR {sql_text}", params)
            rows_cur.execute(f"{fetch} FROM {_CURSOR_NAME}".encode())
            conn.execute(b"ROLLBACK")
    except BaseException:
        # A failed statement aborts the rest of the pipeline, ROLLBACK included.
        _forget_prepared(conn)
        if conn.info.transaction_status != pq.TransactionStatus.IDLE:
            _end_transaction(conn, "ROLLBACK")
        raise
    result = _result(rows_cur, rows_cur.fetchall(), max_rows, extra_columns=extra_columns)
    # The query's own tag rather than FETCH's; unknown when rows were left unread.
    result.status = None if result.truncated else f"SELECT {len(result.rows)}"
    return result


# A byte cap the server applies while it produces rows (see _byte_capped).
_CAP_MARKER = "pgwarden: result over the byte cap at row "
_CAP_ROW = re.compile(re.escape(_CAP_MARKER) + r"(\d+)")


def _byte_capped(
    sql_text: str, classification: Classification | None, max_bytes: int | None
) -> str | None:
    """A SELECT wrapped so that the server stops once its rows pass ``max_bytes``; or None.

    The wrapper keeps a running total of each row's size in its text form (what travels
    in text format, quoting included, so never less) and raises an error, recognisable
    by :data:`_CAP_MARKER` and the row's number, at the first row that would take the
    total past the cap, before sending it. So whatever the query, this process receives
    at most ``max_bytes`` of row data: no row, however large, is ever fetched whole to be
    thrown away. The error costs the FETCH its rows; the caller then fetches exactly the
    rows before that one (:func:`_read_capped`). The window keeps the query's own row
    order (no PARTITION BY or ORDER BY of its own) and reads rows as they are fetched.
    None when there is no cap, or the SQL is not one SELECT a cursor takes.
    """
    if max_bytes is None or classification is None or not classification.cursor_ok:
        return None
    trailing = classification.trailing_chars
    statement = sql_text[: len(sql_text) - trailing] if trailing else sql_text
    # The statement is the caller's SQL by design (checked by the guard, one statement).
    return (
        "SELECT pgwarden_rows.*, CASE WHEN pg_catalog.sum(pg_catalog.octet_length("  # noqa: S608
        "ROW(pgwarden_rows.*)::pg_catalog.text)) OVER pgwarden_window > "
        f"{int(max_bytes)}::pg_catalog.int8 THEN pg_catalog.concat('{_CAP_MARKER}', "
        "pg_catalog.row_number() OVER pgwarden_window)::pg_catalog.int4 END "
        # A newline ends a trailing -- comment of the statement.
        f"AS pgwarden_capped FROM (\n{statement}\n) AS pgwarden_rows "
        "WINDOW pgwarden_window AS (ROWS UNBOUNDED PRECEDING)"
    )


def _read_capped(
    conn: psycopg.Connection[Any],
    capped_sql: str,
    params: Any,
    *,
    timeout_ms: int | None,
    max_rows: int | None,
) -> QueryResult:
    """:func:`_read_through_cursor` of a capped statement: the rows within the byte cap.

    One round trip when the rows fit. Otherwise the server stopped at the row that did
    not: the statement runs again for exactly the rows before it (``truncated``). Should a
    query whose rows change between runs pass the cap early again, the answer is empty
    and ``truncated``, never unbounded.
    """
    fetch_rows: int | None = None
    for _ in range(2):
        try:
            result = _read_through_cursor(
                conn,
                capped_sql,
                params,
                timeout_ms=timeout_ms,
                max_rows=max_rows,
                fetch_rows=fetch_rows,
                extra_columns=1,
            )
        except psycopg.errors.InvalidTextRepresentation as exc:
            over_at = _over_cap_row(exc)
            if over_at is None:
                raise  # the query's own error
            fetch_rows = over_at - 1
            continue
        if fetch_rows is not None:
            result.truncated = True
            result.status = None
        return result
    return _empty_truncated()


def _over_cap_row(exc: psycopg.Error) -> int | None:
    match = _CAP_ROW.search(exc.diag.message_primary or "")
    return int(match.group(1)) if match else None


def _empty_truncated() -> QueryResult:
    return QueryResult(
        columns=[],
        rows=[],
        rowcount=0,
        truncated=True,
        endpoint="",
        role="",
        elapsed_ms=0.0,
        attempts=0,
    )


def _forget_prepared(conn: psycopg.Connection[Any]) -> None:
    """Drop psycopg's prepared statements of ``conn`` after a pipeline was aborted.

    psycopg prepares a statement it has run five times, and counts it prepared as soon as
    it queues the PREPARE. When a statement before it fails, the rest of the pipeline is
    skipped, the PREPARE too, and psycopg would go on executing a statement the server
    never prepared: the next ROLLBACK failed, the connection was closed, and the read
    retried elsewhere as if the connection had been lost. Clearing the cache makes
    psycopg deallocate them all on the next statement and count afresh. (psycopg 3.3's
    prepared cache is not public API; without it, this changes nothing.)
    """
    prepared = getattr(conn, "_prepared", None)
    if prepared is not None:
        prepared.clear()


def _cursor_settings(timeout_ms: int | None) -> bytes:
    """Transaction-local settings in one statement: the timeout, and plans as for a query.

    A cursor is planned for a fast start (cursor_tuple_fraction 0.1); at 1 it gets the
    plan the same statement gets on its own, the one ``explain`` shows.
    """
    settings = "set_config('cursor_tuple_fraction', '1', true)"
    if timeout_ms:
        settings += f", set_config('statement_timeout', '{int(timeout_ms)}ms', true)"
    return f"SELECT {settings}".encode()


def _end_transaction(conn: psycopg.Connection[Any], command: LiteralString) -> None:
    """ROLLBACK or COMMIT what _run_statement began, if the connection can still hear it.

    A COMMIT that fails raises (the caller decides what an unknown outcome means); a
    ROLLBACK after an error must not hide that error: a failed one breaks the connection,
    which the pool then discards.
    """
    if command == "COMMIT":
        conn.execute(command)
        return
    if conn.closed or conn.broken:
        return
    try:
        conn.execute(command)
    except psycopg.Error:
        conn.close()


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


def _cursor(conn: psycopg.Connection[Any], *, extended: bool) -> psycopg.Cursor[Any]:
    return ExtendedCursor(conn) if extended else conn.cursor()


def extended_cursor(conn: psycopg.Connection[Any]) -> psycopg.Cursor[Any]:
    """A cursor on ``conn`` that never uses the simple query protocol (see ExtendedCursor)."""
    return ExtendedCursor(conn)


def _execute(
    conn: psycopg.Connection[Any],
    sql_text: str,
    params: Any,
    *,
    max_rows: int | None,
    stream: bool,
    extended: bool = False,
) -> QueryResult:
    cur = _cursor(conn, extended=extended)
    if stream and max_rows is not None:
        # Single-row mode: stop reading after max_rows + 1 (psycopg cancels the rest),
        # so a huge result is never held in memory.
        rows: list[Any] = []
        for row in cur.stream(sql_text, params, size=_stream_chunk(max_rows)):
            rows.append(row)
            if len(rows) > max_rows:
                break
        return _result(cur, rows, max_rows)
    cur.execute(sql_text, params)
    while cur.nextset():
        pass  # several statements: report the last one
    return _fetch(cur, max_rows=max_rows)


# Rows per message while streaming: a chunk costs one result to build, a row in single-row
# mode one each; bounded so that a huge max_rows still reads in bounded memory.
_STREAM_CHUNK_MAX = 1000


def _stream_chunk(max_rows: int) -> int:
    """Chunked rows (libpq 17+: psycopg's binary package ships it), else one at a time."""
    if pq.version() < 170000:
        return 1
    return max(1, min(max_rows + 1, _STREAM_CHUNK_MAX))


def _fetch(cur: psycopg.Cursor[Any], *, max_rows: int | None) -> QueryResult:
    result = cur.pgresult
    if result is None or not result.nfields:
        return _result(cur, [], None)  # a command: no rows to fetch
    rows = cur.fetchall() if max_rows is None else cur.fetchmany(max_rows + 1)
    return _result(cur, rows, max_rows)


def _result(
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
    return QueryResult(
        columns=columns,
        rows=dict_rows,
        rowcount=rowcount if rowcount >= 0 else len(dict_rows),
        truncated=truncated,
        endpoint="",
        role="",
        elapsed_ms=0.0,
        attempts=0,
        column_types=types,
        status=cur.statusmessage,
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


# How long past its statement timeout a query may go unanswered before the watchdog cuts
# its connection: the server cancels at the timeout itself, unless it is hung.
WATCHDOG_GRACE_S = 2.0


def _deadline_s(endpoint: EndpointView, timeout_ms: int | None) -> float:
    if timeout_ms is None and endpoint.connection is not None:
        timeout_ms = endpoint.connection.statement_timeout_ms
    return (timeout_ms or 30_000) / 1000 + WATCHDOG_GRACE_S


def _set_local_timeout(conn: psycopg.Connection[Any], timeout_ms: int) -> None:
    conn.execute(
        sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(f"{int(timeout_ms)}ms"))
    )


def _current_lsn(conn: psycopg.Connection[Any]) -> str | None:
    # After the commit, so a replica that replayed this position sees the write.
    try:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    except psycopg.Error:
        return None  # the write itself succeeded; only the position is unknown
    return row[0] if row else None


def _restore_session(conn: psycopg.Connection[Any]) -> None:
    """Undo what a raw-connection caller may have changed, before the next caller."""
    if conn.closed or conn.broken:
        return
    try:
        if conn.pgconn.transaction_status != pq.TransactionStatus.IDLE:
            conn.rollback()
        if not conn.autocommit:
            conn.autocommit = True
        conn.read_only = None
        conn.isolation_level = None
        conn.execute("RESET ALL")
    except psycopg.Error:
        conn.close()  # the pool replaces it


def _connection_lost(conn: psycopg.Connection[Any], exc: BaseException) -> bool:
    if conn.closed or conn.broken:
        return True
    # Failures before any server answer (no SQLSTATE) on an OperationalError.
    return isinstance(exc, psycopg.OperationalError) and exc.sqlstate is None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return redact(first)


def _check_sql(sql_text: str) -> None:
    if not isinstance(sql_text, str):
        raise TypeError(f"sql must be a string, not {type(sql_text).__name__}")
    if not sql_text or sql_text.isspace():
        raise ValueError("sql is empty")


def _check_limits(timeout_ms: int | None, max_rows: int | None) -> None:
    if timeout_ms is not None and (not isinstance(timeout_ms, int) or timeout_ms <= 0):
        raise ValueError(f"timeout_ms must be a positive integer, not {timeout_ms!r}")
    if max_rows is not None and (not isinstance(max_rows, int) or max_rows < 0):
        raise ValueError(f"max_rows must be a non-negative integer, not {max_rows!r}")


def _read_preference(read_preference: str | None, view: ClusterView) -> str:
    if read_preference is None:
        return view.read_preference
    if read_preference not in READ_PREFERENCES:
        raise ValueError(
            f"read_preference must be one of {', '.join(READ_PREFERENCES)}, not {read_preference!r}"
        )
    return read_preference


def _facts(
    sql_text: str, params: Any, classification: Classification | None, view: ClusterView
) -> Classification:
    """What the parser says of the statement, even when an explicit intent skipped it.

    Its ``session_state`` (SET, LISTEN, a session advisory lock...) matters whatever the
    intent: a pooled connection is shared, so such state would reach whoever gets the
    connection next, and the router closes it after the call instead of returning it. For
    a session of your own, use :func:`connection` (reset when it is handed back).
    """
    if classification is not None:
        return classification
    return classify(  # cached after the first time
        sql_text, strict=view.strict_classification, client_placeholders=params is not None
    )


def _single_statement(classification: Classification | None) -> bool:
    return classification is not None and classification.statement_count == 1


def _statement(item: Any, index: int) -> tuple[str, Any]:
    if isinstance(item, str):
        text, params = item, None
    else:
        try:
            text, params = item
        except (TypeError, ValueError):
            raise ValueError(
                f"statement {index + 1}: expected (sql, params) or a SQL string"
            ) from None
    _check_sql(text)
    return text, params


def _round(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None


# The process-wide routers (one per purpose) and the module-level API

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


def execute(
    cluster: str,
    sql: str,
    params: Sequence[Any] | dict[str, Any] | None = None,
    *,
    intent: Intent = "auto",
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
    return get_router(purpose).execute(
        cluster,
        sql,
        params,
        intent=intent,
        read_preference=read_preference,
        timeout_ms=timeout_ms,
        max_rows=max_rows,
        min_lsn=min_lsn,
        read_only=read_only,
        max_bytes=max_bytes,
    )


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
    intent: Literal["read", "write"] = "read",
    read_preference: str | None = None,
    purpose: Purpose = OPERATIONS,
) -> AbstractContextManager[psycopg.Connection[Any]]:
    """A pooled psycopg connection (autocommit) for callers that need the raw driver.

    Session changes (SET, an open transaction) are undone when it goes back to the pool.
    """
    return get_router(purpose).connection(cluster, intent=intent, read_preference=read_preference)


def stats(cluster: str, *, purpose: Purpose = OPERATIONS) -> dict[str, Any]:
    """This process's routing statistics for ``cluster``, per endpoint and in total."""
    return get_router(purpose).stats(cluster)


def current_router() -> Router | None:
    """This process's router if anything was routed yet, else None (and none is created)."""
    return _router


__all__ = [
    "ClusterNotFound",
    "ExtendedCursor",
    "NoEndpointAvailable",
    "QueryError",
    "QueryResult",
    "RoutingError",
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
