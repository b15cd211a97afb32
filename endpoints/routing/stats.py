"""What this process saw of each endpoint, and the typed statistics it reports.

:class:`EndpointStats` counts requests and keeps the latency histogram of one
endpoint; :class:`ClusterRuntime` holds a cluster's balancer, circuit breakers and
stats in this process. :func:`cluster_stats` turns them into a
:class:`ClusterRouting`, what ``routing.stats()`` returns (``as_json()`` gives the
plain-dict shape the admin and MCP tools show).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from endpoints.core.balancing import Balancer, Selection
from endpoints.core.retry import CircuitBreaker, CircuitSnapshot
from endpoints.core.vocabulary import State
from endpoints.routing.pools import PoolStats
from endpoints.routing.topology import ClusterView

if TYPE_CHECKING:
    from endpoints.routing.pools import PoolRegistry

_LATENCY_SAMPLES = 1000
_LATENCY_EWMA_ALPHA = 0.2
# Upper bounds (inclusive, ms) of the query latency histogram's buckets, exported by
# /metrics in seconds. Lower than Prometheus's defaults: a routed query on a LAN takes well
# under a millisecond. Above the last bound, a request lands in the +Inf bucket.
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000,
)  # fmt: skip


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
            return NONE_BLOCKED  # the usual case: no connection failure since all closed
        blocked = []
        for name in list(self.suspects):
            breaker = self.breakers[name]
            if breaker.state == "closed":
                if not breaker.snapshot().consecutive_failures:
                    self.suspects.discard(name)
            elif _refusing(breaker):
                blocked.append(name)
        return frozenset(blocked) if blocked else NONE_BLOCKED

    def connection_failed(self, name: str, error: str) -> None:
        self.breaker(name).record_failure()
        self.suspects.add(name)
        self.last_errors[name] = error

    def record(self, name: str, latency_ms: float, *, error: bool, retry: bool) -> None:
        stats = self.stats.get(name) or self.endpoint_stats(name)  # runs on every request
        stats.record(latency_ms, error=error, retry=retry)
        if stats.latency_avg_ms is not None:
            self.latency_ms[name] = stats.latency_avg_ms


# No circuit blocked: the usual answer, one shared object (cached selections key on it).
NONE_BLOCKED: frozenset[str] = frozenset()


def _refusing(breaker: CircuitBreaker) -> bool:
    if breaker.state == "half_open":
        return True  # its one trial request is in flight
    return breaker.snapshot().open_for_s > 0


# What routing.stats() returns


@dataclass(frozen=True, slots=True)
class EndpointRouting:
    """One endpoint as this process's router sees it, and what it sent there."""

    role: str
    address: str
    enabled: bool
    state: str
    weight: int
    health_score: int | None
    available: bool
    unusable: str | None
    requests: int
    errors: int
    retries: int
    latency_avg_ms: float | None
    latency_p95_ms: float | None
    circuit: CircuitSnapshot
    pool: PoolStats | None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class RoutingTotals:
    requests: int
    errors: int
    retries: int
    endpoints: int
    available_endpoints: int
    average_response_ms: float | None
    average_health_score: float | None
    total_connections: int

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ClusterRouting:
    """This process's routing statistics for one cluster, per endpoint and in total."""

    cluster: str
    load_balancing: str
    read_preference: str
    topology_version: int | None
    endpoints: Mapping[str, EndpointRouting]
    totals: RoutingTotals

    def as_json(self) -> dict[str, Any]:
        """The same data as plain dicts and lists (JSON-serialisable)."""
        return {
            "cluster": self.cluster,
            "load_balancing": self.load_balancing,
            "read_preference": self.read_preference,
            "topology_version": self.topology_version,
            "endpoints": {name: e.as_json() for name, e in self.endpoints.items()},
            "totals": self.totals.as_json(),
        }


def cluster_stats(
    view: ClusterView, runtime: ClusterRuntime, pools: PoolRegistry, topology_version: int | None
) -> ClusterRouting:
    blocked = runtime.blocked_circuits()
    endpoints: dict[str, EndpointRouting] = {}
    for endpoint in view.endpoints:
        stats = runtime.endpoint_stats(endpoint.name)
        pool = pools.peek(endpoint.id)
        endpoints[endpoint.name] = EndpointRouting(
            role=endpoint.role,
            address=endpoint.address,
            enabled=endpoint.enabled,
            state=endpoint.state,
            weight=endpoint.weight,
            health_score=endpoint.health_score,
            available=bool(
                endpoint.takes_traffic
                and endpoint.weight > 0
                and endpoint.state != State.DOWN
                and endpoint.name not in blocked
            ),
            unusable=endpoint.unusable or None,
            requests=stats.requests,
            errors=stats.errors,
            retries=stats.retries,
            latency_avg_ms=_round(stats.latency_avg_ms),
            latency_p95_ms=_round(stats.p95_ms()),
            circuit=runtime.breaker(endpoint.name).snapshot(),
            pool=pool.stats() if pool is not None else None,
        )
    return ClusterRouting(
        cluster=view.name,
        load_balancing=view.load_balancing,
        read_preference=view.read_preference,
        topology_version=topology_version,
        endpoints=endpoints,
        totals=_totals(view, runtime, list(endpoints.values())),
    )


def _totals(
    view: ClusterView, runtime: ClusterRuntime, endpoints: list[EndpointRouting]
) -> RoutingTotals:
    latencies = [
        avg
        for e in view.endpoints
        if (avg := runtime.endpoint_stats(e.name).latency_avg_ms) is not None
    ]
    scores = [e.health_score for e in view.endpoints if e.health_score is not None]
    return RoutingTotals(
        requests=sum(e.requests for e in endpoints),
        errors=sum(e.errors for e in endpoints),
        retries=sum(e.retries for e in endpoints),
        endpoints=len(view.endpoints),
        available_endpoints=sum(e.available for e in endpoints),
        average_response_ms=_round(sum(latencies) / len(latencies)) if latencies else None,
        average_health_score=_round(sum(scores) / len(scores)) if scores else None,
        total_connections=sum(e.pool.size for e in endpoints if e.pool is not None),
    )


def _round(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None
