"""One psycopg connection pool per endpoint in each process.

A pool is built on first use from the endpoint's pool settings and the
cluster's connect and statement timeouts, rebuilt when any of them changes,
and drained and closed when the endpoint is disabled, fenced or removed, and
at process exit. Connections run in autocommit: a single statement costs one
round trip, with no BEGIN/COMMIT around it.

Three things psycopg_pool does not do on its own:

- *Last in, first out.* :class:`LifoConnectionPool` hands out the most recently returned
  idle connection (warm caches; surplus connections stay idle and expire), and takes and
  returns idle connections without psycopg_pool's slower general path.

- *A checkout check without a round trip.* psycopg_pool's ``check`` callback
  would cost a ``SELECT`` per request and sleeps with backoff after a failed
  check. Instead :func:`connection_is_dead` polls the socket: an idle
  connection has nothing to read unless the server closed it (a terminated
  backend or a restart sends an error and then EOF), so a connection that died
  while idle is discarded before the caller sees it.
- *Failing fast when the endpoint does not accept connections.* A pool waits
  up to its timeout for a connection even when every attempt is refused at
  once. Each pool's connection class records how the latest attempt went
  (:class:`ConnectTracker`); while the latest attempt failed, a request that
  finds no idle connection gets :class:`EndpointUnreachable` immediately, and
  the circuit breaker's trial request rebuilds the pool so recovery does not
  wait for psycopg_pool's reconnection backoff.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any

import psycopg
from psycopg import pq
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from endpoints.core.errortext import first_line
from endpoints.core.waiting import poll_until
from endpoints.routing.topology import EndpointView

logger = logging.getLogger("pgwarden.pools")

# How often a request waiting on a pool that has not connected yet looks at the
# outcome of the connection attempts, so a refused connection fails it quickly.
_CONNECTING_POLL_S = 0.05
# TCP keepalives, so a connection to a host that vanished is noticed while idle.
KEEPALIVE_KWARGS = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


class PoolError(Exception):
    """No connection could be obtained from an endpoint's pool."""

    def __init__(self, endpoint: str, detail: str) -> None:
        super().__init__(f"{endpoint}: {detail}")
        self.endpoint = endpoint
        self.detail = detail


class EndpointUnreachable(PoolError):
    """The endpoint does not accept connections (counts against its circuit)."""


class PoolExhausted(PoolError):
    """Every connection of the pool stayed busy for the pool timeout (load, not failure)."""


class ConnectTracker:
    """How the latest connection attempt to one endpoint went."""

    UNKNOWN, OK, FAILING = "unknown", "ok", "failing"

    def __init__(self) -> None:
        self.state = self.UNKNOWN
        self.last_error = ""
        self.attempts = 0
        self.failures = 0

    def succeeded(self) -> None:
        self.attempts += 1
        self.state = self.OK

    def failed(self, exc: BaseException) -> None:
        self.attempts += 1
        self.failures += 1
        # libpq repeats "connection to server at ... failed:" on later lines; keep the first.
        self.last_error = first_line(exc)
        self.state = self.FAILING


class LifoConnectionPool(ConnectionPool[Any]):
    """psycopg_pool's pool, handing out the most recently returned idle connection first.

    psycopg_pool keeps idle connections in a deque, takes them from the left and returns
    them to the right: first in, first out, so serial requests rotate through every idle
    connection, each time on the backend whose caches went coldest (measured: routed
    INSERT batches 1.37x -> 1.19-1.28x of a raw pool). Last in, first out (PgBouncer's
    default) keeps reusing the warmest connection and leaves the others idle, so
    ``max_idle`` can close what a burst opened; FIFO rotation keeps them all busy.

    psycopg-pool is pinned in requirements.txt; ``tests/test_pools.py`` fails if an upgrade
    changes the method relied on here (``_get_ready_connection`` taking ``_pool``'s left end).
    """

    def _get_ready_connection(self, timeout: float | None) -> Any:
        idle = self._pool
        if len(idle) > 1:
            idle.rotate(1)  # the most recently returned (right end) to the left end it pops
        return super()._get_ready_connection(timeout)

    def has_idle(self) -> bool:
        """Whether an idle connection is ready (read without the pool's lock: a hint)."""
        return bool(self._pool)

    # getconn and putconn's common case, without their logging calls, checks and layers of
    # calls: they run on every routed request (measured: ~3 µs of ~12 µs of routing
    # overhead per call). Anything out of the ordinary goes through psycopg_pool's own path.
    # psycopg-pool is pinned; tests/test_pools.py checks the internals used here.

    def take_idle(self) -> psycopg.Connection[Any] | None:
        """An idle connection (the most recently returned), or None: then call getconn."""
        if self._closed:
            return None
        with self._lock:
            idle = self._pool
            if not idle:
                return None
            conn = idle.pop()
            if len(idle) < self._nconns_min:
                self._nconns_min = len(idle)
        self._stats[self._REQUESTS_NUM] += 1
        conn._pool = self  # as getconn does: marks it as lent by this pool
        return conn

    def give_back(self, conn: psycopg.Connection[Any]) -> None:
        """Return ``conn``: straight to the idle list when nothing else is due, else putconn."""
        if (
            self._reset is None
            and self._pool_full_event is None
            and not self._closed
            and conn._pool is self
            and conn.pgconn.transaction_status == pq.TransactionStatus.IDLE
            and conn._expire_at > time.monotonic()
            and conn._created_at > self._drained_at
        ):
            with self._lock:
                if not self._waiting and not self._closed:
                    conn._pool = None  # as psycopg_pool does for an idle connection
                    self._pool.append(conn)
                    return
        self.putconn(conn)


class TrackedConnection(psycopg.Connection[Any]):
    tracker: ConnectTracker
    # Registered once per connection: building a poll object per checkout costs more.
    idle_poller: select.poll | None = None
    # The client encoding as a Python codec name, once known (see routing._encoding).
    python_encoding: str | None = None
    # The cursor routed statements reuse on this connection (see statements.execute).
    routed_cursor: psycopg.Cursor[Any] | None = None

    @classmethod
    def connect(cls, conninfo: str = "", **kwargs: Any) -> Any:
        try:
            conn = super().connect(conninfo, **kwargs)
        except BaseException as exc:
            cls.tracker.failed(exc)
            raise
        cls.tracker.succeeded()
        return conn


def connection_is_dead(conn: psycopg.Connection[Any]) -> bool:
    """Whether an idle connection was closed by the server, without a round trip."""
    pgconn = conn.pgconn
    if pgconn.transaction_status != pq.TransactionStatus.IDLE:
        return True  # in a transaction, or closed or broken (libpq says UNKNOWN then)
    poller = getattr(conn, "idle_poller", None)
    if poller is None:
        poller = select.poll()
        poller.register(pgconn.socket, select.POLLIN | select.POLLERR | select.POLLHUP)
        if isinstance(conn, TrackedConnection):
            conn.idle_poller = poller
    # Readable while idle: a notification, or the server's goodbye (a FATAL message, which
    # libpq hands to the notice processor) followed by EOF, which only the next read sees.
    for _ in range(4):
        if not poller.poll(0):
            return False
        try:
            pgconn.consume_input()
        except psycopg.OperationalError:
            return True
        if pgconn.status != pq.ConnStatus.OK:
            return True
    return False


class Watchdog:
    """Ends queries whose server stopped answering, by shutting their socket down.

    ``statement_timeout`` is enforced by the server, so a server that hangs (a stopped
    process, a frozen VM, a partition where the kernel still acknowledges) would hold the
    request forever: TCP keepalives do not fire while the peer's kernel answers. A query
    still running ``grace_s`` after its own timeout has its socket shut down from this
    thread; psycopg then fails it as a lost connection, which the router retries (a read)
    or reports as an unknown outcome (a write).
    """

    def __init__(self, interval_s: float = 0.2) -> None:
        self._interval_s = interval_s
        self._armed: dict[int, tuple[float, int]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.fired = 0

    def arm(self, conn: psycopg.Connection[Any], timeout_s: float) -> None:
        if self._thread is None:
            self._start()
        self._armed[id(conn)] = (time.monotonic() + timeout_s, conn.pgconn.socket)

    def disarm(self, conn: psycopg.Connection[Any]) -> None:
        # Under the lock, so the watchdog never shuts down a connection that has moved on.
        with self._lock:
            self._armed.pop(id(conn), None)

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="pgwarden-query-watchdog", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self._interval_s)
            now = time.monotonic()
            for key, (deadline, fd) in list(self._armed.items()):
                if deadline > now:
                    continue
                with self._lock:
                    if self._armed.get(key) != (deadline, fd):
                        continue  # finished meanwhile
                    del self._armed[key]
                    self._shut_down(fd)

    def _shut_down(self, fd: int) -> None:
        try:
            # A duplicate of the descriptor: shutdown acts on the socket both share, and
            # closing the duplicate leaves psycopg's descriptor for psycopg to close.
            with socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.shutdown(socket.SHUT_RDWR)
            self.fired += 1
            logger.warning("a query outlived its deadline: its connection was cut")
        except OSError:
            pass  # already closed

    def forget_after_fork(self) -> None:
        self._armed = {}
        self._lock = threading.Lock()
        self._thread = None


@dataclass(frozen=True, slots=True)
class PoolStats:
    """One endpoint pool's connections as of one instant."""

    size: int
    in_use: int
    idle: int
    waiting: int
    min_size: int
    max_size: int
    connections_opened: int
    connection_errors: int

    def as_json(self) -> dict[str, int]:
        return asdict(self)


class Lease:
    """A connection taken from an :class:`EndpointPool`, given back exactly once.

    ``with pool.acquire() as conn: ...`` gives it back when the block ends; the router,
    which decides what to do with the connection before giving it back, calls
    :meth:`release` itself.
    """

    __slots__ = ("_owner", "_pool", "conn")

    def __init__(
        self, owner: EndpointPool, pool: LifoConnectionPool, conn: psycopg.Connection[Any]
    ) -> None:
        self._owner = owner
        self._pool: LifoConnectionPool | None = pool
        self.conn = conn

    def __enter__(self) -> psycopg.Connection[Any]:
        return self.conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def release(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            owner = self._owner  # runs on every request: no further call layers
            with owner._lock:
                owner.in_use -= 1
            pool.give_back(self.conn)


class EndpointPool:
    """The pool of one endpoint in this process, with fail-fast acquisition."""

    def __init__(self, endpoint: EndpointView) -> None:
        if endpoint.connection is None:
            raise ValueError(f"{endpoint.label}: {endpoint.unusable}")
        self.endpoint = endpoint
        self.key = endpoint.pool_key
        self.in_use = 0
        self._lock = threading.Lock()
        self._closed = False
        self.tracker = ConnectTracker()
        self._pool = self._new_pool()

    def _new_pool(self) -> LifoConnectionPool:
        endpoint = self.endpoint
        assert endpoint.connection is not None
        self.tracker = ConnectTracker()
        connection_class = type(
            "EndpointConnection", (TrackedConnection,), {"tracker": self.tracker}
        )
        settings = endpoint.pool
        pool = LifoConnectionPool(
            kwargs={
                **endpoint.connection.connect_kwargs(),
                **KEEPALIVE_KWARGS,
                "autocommit": True,
            },
            connection_class=connection_class,
            min_size=settings.min_size,
            max_size=settings.max_size,
            timeout=settings.timeout_s,
            max_idle=settings.max_idle_s,
            # psycopg_pool shortens each connection's lifetime by up to 5% at random, so
            # connections opened together do not all expire together.
            max_lifetime=settings.max_lifetime_s,
            name=endpoint.label,
            open=False,
        )
        pool.open(wait=False)
        return pool

    # Acquisition

    def acquire(self, *, trial: bool = False) -> Lease:
        """A live connection, leased: ``with pool.acquire() as conn:`` gives it back.

        ``trial`` is the circuit breaker's half-open request: if the endpoint has
        been refusing connections, start over with a fresh pool so the attempt is
        made now rather than after psycopg_pool's backoff.
        """
        if trial and self.tracker.state == ConnectTracker.FAILING:
            self._restart()
        pool = self._pool
        if self.tracker.state == ConnectTracker.OK:
            # The common case, kept short: it runs on every request.
            conn = pool.take_idle()
            try:
                # Short: an idle connection comes at once; otherwise the slow path waits
                # while watching whether the endpoint still accepts connections.
                if conn is None:
                    conn = pool.getconn(_CONNECTING_POLL_S)
            except (PoolTimeout, PoolClosed):
                pass  # the slow path below says which it was
            else:
                if not connection_is_dead(conn):
                    with self._lock:
                        self.in_use += 1
                    return Lease(self, pool, conn)
                conn.close()
                pool.putconn(conn)
        connect_s = self._connect_timeout_s()
        deadline = time.monotonic() + max(self.endpoint.pool.timeout_s, connect_s)
        # Every discarded connection shrinks the pool, so this loop ends.
        for _ in range(self.endpoint.pool.max_size + 2):
            conn = self._getconn(pool, deadline, connect_s)
            if not connection_is_dead(conn):
                with self._lock:
                    self.in_use += 1
                return Lease(self, pool, conn)
            logger.info("%s: discarding a connection the server closed", self.endpoint.label)
            conn.close()
            pool.putconn(conn)
        raise EndpointUnreachable(self.endpoint.label, "every pooled connection was closed")

    def _getconn(
        self, pool: LifoConnectionPool, deadline: float, connect_s: float
    ) -> psycopg.Connection[Any]:
        label = self.endpoint.label
        connecting_deadline = time.monotonic() + connect_s
        # Even when connecting last worked, wait in growing slices and look at the tracker
        # in between: if the server just died, the pool's next connection attempt fails
        # within milliseconds and the caller should hear it then, not after the pool
        # timeout. Growing, so a merely busy pool soon waits in long, fair stretches.
        ok_slice_s = _CONNECTING_POLL_S
        while True:
            state = self.tracker.state
            remaining = deadline - time.monotonic()
            try:
                if state == ConnectTracker.OK:
                    wait_s = min(remaining, ok_slice_s)
                    ok_slice_s = min(ok_slice_s * 2, 1.0)
                    return pool.getconn(timeout=max(wait_s, 0.001))
                if state == ConnectTracker.FAILING:
                    # An idle connection may still be good; otherwise fail now.
                    return pool.getconn(timeout=0.001)
                # No attempt has finished yet: wait in short slices, to notice a refusal.
                slice_s = min(_CONNECTING_POLL_S, connecting_deadline - time.monotonic())
                # Watch for the pool's own first connection rather than queueing for one:
                # a queued request makes psycopg_pool open another, so the pool would grow
                # past min_size before serving its first request.
                ready = poll_until(
                    functools.partial(self._connected_or_refused, pool),
                    timeout_s=max(slice_s, 0.001),
                    interval_s=0.002,
                )
                if ready and self.tracker.state != ConnectTracker.FAILING:
                    return pool.getconn(timeout=max(slice_s, 0.001))
            except PoolTimeout:
                pass
            except PoolClosed as exc:
                raise EndpointUnreachable(label, "its pool was closed (endpoint changed)") from exc
            now = time.monotonic()
            if self.tracker.state == ConnectTracker.FAILING:
                raise EndpointUnreachable(label, self.tracker.last_error)
            if state == ConnectTracker.UNKNOWN and self.tracker.state == ConnectTracker.UNKNOWN:
                if now >= connecting_deadline:
                    raise EndpointUnreachable(
                        label, f"no connection within the {connect_s:g} s connect timeout"
                    )
                continue
            if now >= deadline:
                raise PoolExhausted(
                    label,
                    f"all {self.endpoint.pool.max_size} pooled connections stayed busy for "
                    f"{self.endpoint.pool.timeout_s:g} s (raise the pool max size, or "
                    "lower the load)",
                )

    def _connected_or_refused(self, pool: LifoConnectionPool) -> bool:
        return pool.has_idle() or pool.closed or self.tracker.state == ConnectTracker.FAILING

    def _connect_timeout_s(self) -> float:
        assert self.endpoint.connection is not None
        # libpq's own timeout, plus a margin for the pool's worker to hand the connection over.
        return float(self.endpoint.connection.connect_timeout_s) + 1.0

    def _restart(self) -> None:
        with self._lock:
            old = self._pool
            self._pool = self._new_pool()
        old.close(timeout=0)

    # Reporting and shutdown

    def stats(self) -> PoolStats:
        raw = self._pool.get_stats()
        return PoolStats(
            size=raw.get("pool_size", 0),
            in_use=self.in_use,
            idle=raw.get("pool_available", 0),
            waiting=raw.get("requests_waiting", 0),
            min_size=raw.get("pool_min", 0),
            max_size=raw.get("pool_max", 0),
            connections_opened=raw.get("connections_num", 0),
            connection_errors=raw.get("connections_errors", 0),
        )

    def close(self, timeout_s: float = 5.0) -> None:
        """Close idle connections now; busy ones close when their request ends."""
        self._closed = True
        self._pool.close(timeout=timeout_s)


class PoolRegistry:
    """Every pool of this process, keyed by endpoint id."""

    def __init__(self) -> None:
        self._pools: dict[int, EndpointPool] = {}
        self._lock = threading.Lock()

    def get(self, endpoint: EndpointView) -> EndpointPool:
        pool = self._pools.get(endpoint.id)
        # The same view object as last time (same snapshot) cannot have changed.
        if pool is not None and pool.endpoint is endpoint:
            return pool
        if pool is not None and pool.key == endpoint.pool_key:
            pool.endpoint = endpoint  # a new snapshot, same settings: keep the pool
            return pool
        with self._lock:
            pool = self._pools.get(endpoint.id)
            if pool is not None and pool.key == endpoint.pool_key:
                return pool
            if pool is not None:
                logger.info("%s: connection settings changed, rebuilding its pool", endpoint.label)
                pool.close(timeout_s=0)
            pool = EndpointPool(endpoint)
            self._pools[endpoint.id] = pool
            return pool

    def peek(self, endpoint_id: int) -> EndpointPool | None:
        return self._pools.get(endpoint_id)

    def sync(self, endpoints: Iterable[EndpointView]) -> None:
        """Close the pools of endpoints that are gone, disabled, fenced or changed."""
        wanted = {endpoint.id: endpoint for endpoint in endpoints if endpoint.takes_traffic}
        with self._lock:
            doomed = [
                (endpoint_id, pool)
                for endpoint_id, pool in self._pools.items()
                if endpoint_id not in wanted or wanted[endpoint_id].pool_key != pool.key
            ]
            for endpoint_id, _ in doomed:
                del self._pools[endpoint_id]
        for _, pool in doomed:
            logger.info(
                "%s: closing its pool (endpoint changed or out of service)", pool.endpoint.label
            )
            pool.close(timeout_s=0)

    def close_all(self, timeout_s: float = 5.0) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close(timeout_s=timeout_s)

    def forget_after_fork(self) -> None:
        # The parent's pools (their sockets and worker threads) are not ours to use or close.
        self._pools = {}
        self._lock = threading.Lock()


registry = PoolRegistry()
atexit.register(registry.close_all, 1.0)
os.register_at_fork(after_in_child=registry.forget_after_fork)
watchdog = Watchdog()
os.register_at_fork(after_in_child=watchdog.forget_after_fork)
