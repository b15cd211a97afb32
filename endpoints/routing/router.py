"""The router: for each request, an eligible endpoint, a pooled connection, and retries.

:class:`Router` serves one purpose (operations, or an assistant's) across clusters. Each
request classifies its SQL (:mod:`endpoints.core.classify`), chooses among the eligible
endpoints (:func:`endpoints.core.balancing.select_eligible` and the cluster's strategy),
checks a connection out of the endpoint's pool and runs the statement inside one
:class:`~endpoints.routing.attempt.Attempt`; a connection failure is retried elsewhere by
the cluster's retry policy, never a write whose outcome is unknown.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import psycopg

from endpoints.core.balancing import Candidate, select_eligible
from endpoints.core.classify import Classification, classify
from endpoints.core.errortext import first_line
from endpoints.core.purposes import OPERATIONS, Purpose
from endpoints.core.retry import retry_delay_s
from endpoints.core.vocabulary import Intent, ReadPreference, Role, Strategy
from endpoints.routing.attempt import (
    WATCHDOG_GRACE_S,
    Attempt,
    Checkout,
    RequestProgress,
    deadline_s,
)
from endpoints.routing.cursors import byte_capped
from endpoints.routing.errors import (
    ClusterNotFound,
    NoEndpointAvailable,
    QueryError,
    WriteOutcomeUnknown,
)
from endpoints.routing.options import (
    DEFAULT_OPTIONS,
    PLAIN_OPTIONS,
    ExecuteOptions,
    check_limits,
    check_sql,
    statement,
)
from endpoints.routing.options import read_preference as _preference
from endpoints.routing.pools import EndpointUnreachable, PoolError, PoolExhausted, PoolRegistry
from endpoints.routing.results import QueryResult, cursor_for, fetch
from endpoints.routing.statements import (
    StatementPlan,
    current_lsn,
    run_statement,
    set_local_timeout,
    set_session_timeout,
)
from endpoints.routing.stats import NONE_BLOCKED, ClusterRouting, ClusterRuntime, cluster_stats
from endpoints.routing.topology import (
    ClusterView,
    EndpointView,
    PurposeTopology,
    Snapshot,
    Topology,
)

_RECOVERY_CONFLICT = "40001"
# Statement decisions cached per router; a full cache is emptied, not evicted entry by entry.
_DECISIONS_MAX = 4096
_READ_ONLY_TRANSACTION = "25006"
_CONNECTION_FAILURE = "08006"


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
        # Per statement text (plain calls only): see execute.
        self._decisions: dict[tuple[str, str, bool, bool], _Decision] = {}

    # Public API (the facade's functions delegate here)

    def execute(
        self,
        cluster: str,
        sql_text: str,
        params: Sequence[Any] | dict[str, Any] | None = None,
        options: ExecuteOptions = DEFAULT_OPTIONS,
    ) -> QueryResult:
        check_sql(sql_text)
        plain = options is PLAIN_OPTIONS.get(options.intent)
        if not plain:
            options.check()
        view, runtime = self._cluster(cluster)
        if plain:
            # The usual call: what the statement needs depends only on these, so it is
            # decided once per statement text, not on every call (a dict lookup instead of
            # classify's cache, the plan and the options checks).
            key = (sql_text, options.intent, params is not None, view.strict_classification)
            decision = self._decisions.get(key) or self._remember(key, params, options, view)
        else:
            decision = self._decide(sql_text, params, options, view)
        kind, classification, facts, plan, discard = decision
        preference = options.read_preference
        request = RequestProgress(
            view.name,
            kind,
            view.read_preference if preference is None else _preference(preference, view),
        )
        while True:
            checkout = self._checkout(view, runtime, request, min_lsn=options.min_lsn)
            attempt = Attempt(
                runtime,
                checkout,
                request,
                deadline_s=deadline_s(checkout.endpoint, options.timeout_ms),
                discard=discard,
            )
            try:
                with attempt as conn:
                    result = run_statement(conn, sql_text, params, plan)
            except psycopg.Error as exc:
                endpoint = checkout.endpoint.name
                if attempt.lost:
                    if request.kind == Intent.WRITE:
                        raise WriteOutcomeUnknown(view.name, endpoint, first_line(exc)) from None
                    continue
                if not self._retry_query_error(view, request, checkout, exc, options.intent):
                    raise QueryError.from_psycopg(exc, endpoint) from None
                if request.kind != kind:  # a read the replica refused as a write
                    kind = request.kind
                    plan = self._plan(sql_text, options, classification, facts, kind, view)
                continue
            if request.kind == Intent.WRITE and view.has_replicas:
                result.read_lsn_later(functools.partial(self._read_lsn, checkout.endpoint))
            return _finish(result, checkout, request)

    def _remember(
        self,
        key: tuple[str, str, bool, bool],
        params: Any,
        options: ExecuteOptions,
        view: ClusterView,
    ) -> _Decision:
        decision = self._decide(key[0], params, options, view)
        if len(self._decisions) >= _DECISIONS_MAX:
            self._decisions.clear()  # bounded; refilled by the statements in use
        self._decisions[key] = decision
        return decision

    def _decide(
        self, sql_text: str, params: Any, options: ExecuteOptions, view: ClusterView
    ) -> _Decision:
        classification = None
        kind: str
        if options.intent == Intent.AUTO:
            classification = classify(
                sql_text, strict=view.strict_classification, client_placeholders=params is not None
            )
            kind = classification.kind
        else:
            kind = options.intent
        facts = _facts(sql_text, params, classification, view)
        plan = self._plan(sql_text, options, classification, facts, kind, view)
        # State left on the connection (SET, LISTEN, a session lock, or the session timeout
        # an outside-transaction statement needs) must not reach the next caller.
        discard = facts.session_state or plan.outside_transaction
        return _Decision(kind, classification, facts, plan, discard)

    def _plan(
        self,
        sql_text: str,
        options: ExecuteOptions,
        classification: Classification | None,
        facts: Classification,
        kind: str,
        view: ClusterView,
    ) -> StatementPlan:
        if options is DEFAULT_OPTIONS and not facts.outside_transaction:
            return _plain_plan(kind == Intent.READ, self.extended_only)
        read_only = options.read_only
        as_cursor = read_only and classification is not None and classification.cursor_ok
        return StatementPlan(
            read=kind == Intent.READ or read_only,
            read_only=read_only,
            timeout_ms=options.timeout_ms,
            max_rows=options.max_rows,
            stream=(
                kind == Intent.READ
                and options.max_rows is not None
                and classification is not None
                and classification.statement_count == 1
            ),
            as_cursor=as_cursor,
            # VACUUM, CREATE INDEX CONCURRENTLY...: never inside a transaction block.
            outside_transaction=facts.outside_transaction and not read_only,
            extended=self.extended_only,
            # The byte cap is applied by the server while it produces rows: only for a cursor.
            capped=byte_capped(sql_text, classification, options.max_bytes) if as_cursor else None,
        )

    def transaction(
        self,
        cluster: str,
        statements: Sequence[tuple[str, Sequence[Any] | dict[str, Any] | None]],
        *,
        read_only: bool = False,
        read_preference: str | None = None,
        timeout_ms: int | None = None,
    ) -> list[QueryResult]:
        statements = [statement(item, index) for index, item in enumerate(statements)]
        if not statements:
            raise ValueError("a transaction needs at least one statement")
        check_limits(timeout_ms, None)
        view, runtime = self._cluster(cluster)
        kind = Intent.READ if read_only else Intent.WRITE
        request = RequestProgress(view.name, kind, _preference(read_preference, view))
        discard = any(_facts(text, params, None, view).session_state for text, params in statements)
        while True:
            checkout = self._checkout(view, runtime, request)
            progress = _TransactionProgress()
            attempt = Attempt(
                runtime,
                checkout,
                request,
                # One deadline for the whole transaction: each statement's timeout, and COMMIT.
                deadline_s=deadline_s(checkout.endpoint, timeout_ms) * (len(statements) + 1),
                discard=discard,
            )
            try:
                with attempt as conn:
                    results = self._run_transaction(
                        conn, statements, progress, read_only, timeout_ms
                    )
            except psycopg.Error as exc:
                if attempt.lost and read_only:
                    continue
                raise _transaction_error(view, checkout, attempt, progress, exc) from None
            if not read_only and view.has_replicas:
                # One position for the whole transaction, read once, whichever result asks.
                read_lsn = functools.cache(functools.partial(self._read_lsn, checkout.endpoint))
                for result in results:
                    result.read_lsn_later(read_lsn)
            return [_finish(result, checkout, request) for result in results]

    def _run_transaction(
        self,
        conn: psycopg.Connection[Any],
        statements: list[tuple[str, Any]],
        progress: _TransactionProgress,
        read_only: bool,
        timeout_ms: int | None,
    ) -> list[QueryResult]:
        results: list[QueryResult] = []
        with conn.transaction(force_rollback=read_only):
            if read_only:
                conn.execute("SET TRANSACTION READ ONLY")
            if timeout_ms:
                set_local_timeout(conn, timeout_ms)
            for position, (text, params) in enumerate(statements):
                progress.index = position  # named in the error if this statement fails
                cursor = cursor_for(conn, extended=self.extended_only)
                results.append(fetch(cursor.execute(text, params), max_rows=None))
            progress.committing = True
        return results

    @contextmanager
    def connection(
        self,
        cluster: str,
        *,
        intent: str = Intent.READ,
        read_preference: str | None = None,
        timeout_ms: int | None = None,
    ) -> Iterator[psycopg.Connection[Any]]:
        if intent not in (Intent.READ, Intent.WRITE):
            raise ValueError(f"intent must be 'read' or 'write', not {intent!r}")
        check_limits(timeout_ms, None)
        view, runtime = self._cluster(cluster)
        request = RequestProgress(view.name, intent, _preference(read_preference, view))
        checkout = self._checkout(view, runtime, request)
        attempt = Attempt(
            runtime,
            checkout,
            request,
            deadline_s=None if timeout_ms is None else timeout_ms / 1000 + WATCHDOG_GRACE_S,
            restore=True,
        )
        with attempt as conn:
            if timeout_ms is not None:
                set_session_timeout(conn, timeout_ms)  # RESET ALL undoes it on return
            yield conn

    def _read_lsn(self, endpoint: EndpointView) -> str | None:
        """``endpoint``'s WAL position now, on a pooled connection; None if out of reach.

        Called after a write committed there (see :attr:`QueryResult.lsn`), so at or past
        that write's commit record.
        """
        pool = self.pools.peek(endpoint.id)
        if pool is None:
            return None
        try:
            with pool.acquire() as conn:
                return current_lsn(conn)
        except PoolError:
            return None

    def runtimes(self) -> list[ClusterRuntime]:
        """The clusters this router has served, by name; looking creates nothing."""
        # One C-level copy, without the lock: _adopt holds it while pools close, and a
        # metrics scrape must not wait for that.
        runtimes = list(self._runtimes.values())
        return sorted(runtimes, key=lambda runtime: runtime.view.name)

    def stats(self, cluster: str) -> ClusterRouting:
        view, runtime = self._cluster(cluster)
        return cluster_stats(view, runtime, self.pools, self.topology.current().version)

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
        request: RequestProgress,
        *,
        min_lsn: str | None = None,
    ) -> Checkout:
        """An endpoint and a live connection to it, retrying connection failures."""
        policy = view.retry
        while True:
            if request.attempts >= policy.max_attempts:
                raise self._nothing_available(view, runtime, request)
            candidate = self._choose(view, runtime, request)
            breaker = runtime.breakers.get(candidate.name) or runtime.breaker(candidate.name)
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
                lease = pool.acquire(trial=trial)
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
            checkout = Checkout(endpoint, pool, lease, breaker, retry)
            if (
                min_lsn
                and endpoint.role == Role.REPLICA
                and not self._has_replayed(checkout, min_lsn)
            ):
                lease.release()
                breaker.record_success()
                request.attempts -= 1  # not a failure: just not caught up yet
                request.ruled_out[endpoint.name] = f"has not replayed LSN {min_lsn} yet"
                continue
            return checkout

    def _choose(
        self, view: ClusterView, runtime: ClusterRuntime, request: RequestProgress
    ) -> Candidate:
        blocked = runtime.blocked_circuits() if runtime.suspects else NONE_BLOCKED
        # Nearest depends on observed latency, which moves with every request.
        cacheable = not (
            request.ruled_out or request.failed or request.read_preference == ReadPreference.NEAREST
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
        if view.load_balancing == Strategy.LEAST_CONNECTIONS:
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
        request: RequestProgress,
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

    def _has_replayed(self, checkout: Checkout, min_lsn: str) -> bool:
        try:
            row = checkout.conn.execute(
                "SELECT pg_catalog.pg_last_wal_replay_lsn() >= %s::pg_lsn", [min_lsn]
            ).fetchone()
        except psycopg.Error:
            return False
        return bool(row and row[0])

    # Bookkeeping after an attempt

    def _retry_query_error(
        self,
        view: ClusterView,
        request: RequestProgress,
        checkout: Checkout,
        exc: psycopg.Error,
        intent: str,
    ) -> bool:
        """Whether an SQL error is one that can be retried without duplicating anything."""
        if request.kind != Intent.READ or checkout.endpoint.role != Role.REPLICA:
            return False
        if exc.sqlstate == _RECOVERY_CONFLICT and request.attempts < view.retry.max_attempts:
            request.failed[checkout.endpoint.name] = "query cancelled by a recovery conflict"
            return True
        if exc.sqlstate == _READ_ONLY_TRANSACTION and intent == Intent.AUTO:
            # The parser took it for a read (e.g. a user function that writes); the replica
            # refused it without effect, so running it once on the primary is safe.
            request.kind = Intent.WRITE
            request.attempts = 0
            return True
        return False


class _Decision(NamedTuple):
    """What a statement needs, whatever endpoint runs it: see Router.execute."""

    kind: str
    classification: Classification | None
    facts: Classification
    plan: StatementPlan
    discard: bool


class _TransactionProgress:
    """How far a transaction got: which statement ran last, and whether COMMIT was sent."""

    __slots__ = ("committing", "index")

    def __init__(self) -> None:
        self.index = 0
        self.committing = False


def _transaction_error(
    view: ClusterView,
    checkout: Checkout,
    attempt: Attempt,
    progress: _TransactionProgress,
    exc: psycopg.Error,
) -> QueryError | WriteOutcomeUnknown:
    endpoint = checkout.endpoint.name
    if not attempt.lost:
        return QueryError.from_psycopg(
            exc, endpoint, None if progress.committing else progress.index
        )
    if progress.committing:
        return WriteOutcomeUnknown(view.name, endpoint, first_line(exc))
    return QueryError(
        f"connection lost before COMMIT ({first_line(exc)}): the transaction was "
        "rolled back by the server, nothing was committed",
        sqlstate=_CONNECTION_FAILURE,
        endpoint=endpoint,
        statement_index=progress.index,
    )


def _finish(result: QueryResult, checkout: Checkout, request: RequestProgress) -> QueryResult:
    result.endpoint = checkout.endpoint.name
    result.role = checkout.endpoint.role
    result.attempts = request.attempts
    result.elapsed_ms = (time.perf_counter() - request.started) * 1000
    return result


@functools.lru_cache(maxsize=8)
def _plain_plan(read: bool, extended: bool) -> StatementPlan:
    # The usual request (no timeout, row cap or read-only mode) needs one of a few plans:
    # built once each, not on every call.
    return StatementPlan(read=read, extended=extended)


def _facts(
    sql_text: str, params: Any, classification: Classification | None, view: ClusterView
) -> Classification:
    """What the parser says of the statement, even when an explicit intent skipped it.

    Its ``session_state`` (SET, LISTEN, a session advisory lock...) matters whatever the
    intent: a pooled connection is shared, so such state would reach whoever gets the
    connection next, and the router closes it after the call instead of returning it. For
    a session of your own, use :func:`endpoints.routing.connection` (reset when it is
    handed back).
    """
    if classification is not None:
        return classification
    return classify(  # cached after the first time
        sql_text, strict=view.strict_classification, client_placeholders=params is not None
    )
