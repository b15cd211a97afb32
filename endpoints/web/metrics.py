"""Prometheus metrics (``GET /metrics``), and pgwarden's registry view of a cluster.

One custom collector, in a registry of its own (not prometheus_client's global one),
builds every metric family at scrape time from two sources:

* **The registry** (probes, scores, failovers): a few bounded queries on the control
  database per scrape. Health sweeps write these values, so every web worker, on every
  host, reports the same numbers whichever of them answers the scrape.
* **This process's router** (requests, errors, retries, circuits, pools, query latency):
  the counters of the process that answers the scrape, for the clusters it has routed
  to. Every such series carries a ``process`` label (``host:pid``): behind several
  gunicorn workers each scrape sees one worker's counters, and the label keeps them
  apart instead of mixing them into one jumping series. A scrape never creates a
  router, a pool or a connection to a managed cluster.

The same eligibility rules decide, from the registry, which primary and which replicas
the health-check views (:mod:`endpoints.web.views`) report: :func:`registry_view`.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from django.db import DatabaseError
from django.db.models import Count, OuterRef, Subquery
from django.utils import timezone
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from endpoints import routing
from endpoints.core.balancing import Candidate, select_eligible
from endpoints.core.retry import CLOSED, HALF_OPEN, OPEN
from endpoints.core.vocabulary import FailoverKind, FailoverOutcome, values
from endpoints.models import Cluster, Endpoint, FailoverEvent, Role, State

if TYPE_CHECKING:
    from endpoints.core.retry import CircuitBreaker
    from endpoints.routing.pools import PoolStats

logger = logging.getLogger("pgwarden.metrics")

ENDPOINT_LABELS = ("cluster", "endpoint", "role")
ROUTER_LABELS = (*ENDPOINT_LABELS, "process")
STATES = values(State)
CIRCUIT_STATES = (CLOSED, OPEN, HALF_OPEN)
FAILOVER_KINDS = values(FailoverKind)
FINISHED_OUTCOMES = tuple(
    outcome for outcome in values(FailoverOutcome) if outcome != FailoverOutcome.IN_PROGRESS
)
# The +Inf bucket's label, and each bound in seconds as Prometheus wants them.
_BUCKET_LABELS = (*(f"{bound / 1000:g}" for bound in routing.LATENCY_BUCKETS_MS), "+Inf")


# The registry's view of a cluster


def candidate(endpoint: Endpoint) -> Candidate:
    """The endpoint as routing's eligibility rules see it, from its registry row."""
    return Candidate(
        name=endpoint.name,
        role=endpoint.role,
        enabled=endpoint.enabled,
        state=endpoint.state,
        weight=endpoint.weight,
        in_recovery=endpoint.in_recovery,
        lag_s=endpoint.replication_lag_s,
        latency_ms=endpoint.last_latency_ms,
        health_score=endpoint.health_score,
    )


@dataclass(frozen=True)
class RegistryView:
    """Which endpoints routing would use, judged from the registry alone.

    ``primary`` takes writes; ``replicas`` may serve reads within ``max_lag_s``, best
    first (health score, then lag, then name). ``reasons`` says why every other endpoint
    of that role is left out, in routing's words. Circuit breakers are per process and
    play no part here.
    """

    cluster: str
    max_lag_s: float | None
    primary: Endpoint | None
    replicas: tuple[Endpoint, ...]
    primary_reasons: dict[str, str] = field(default_factory=dict)
    replica_reasons: dict[str, str] = field(default_factory=dict)


def registry_view(
    cluster: Cluster, endpoints: Sequence[Endpoint], *, max_lag_s: float | None = None
) -> RegistryView:
    """Apply routing's rules (:func:`balancing.select_eligible`) to the registry's rows.

    ``max_lag_s`` replaces the cluster's *max replica lag* when given. As in routing, a
    replica whose lag nothing has measured yet counts as within the bound.
    """
    bound = cluster.max_replica_lag_s if max_lag_s is None else max_lag_s
    by_name = {endpoint.name: endpoint for endpoint in endpoints}
    try:
        candidates = [candidate(endpoint) for endpoint in endpoints]
    except ValueError as exc:  # a row written around validation (unknown role or state)
        reason = f"cannot be routed to: {exc}"
        return RegistryView(
            cluster.name,
            bound,
            None,
            (),
            {e.name: reason for e in endpoints if e.role == Role.PRIMARY},
            {e.name: reason for e in endpoints if e.role == Role.REPLICA},
        )
    writes = select_eligible(candidates, intent="write", read_preference="primary", max_lag_s=bound)
    reads = select_eligible(candidates, intent="read", read_preference="secondary", max_lag_s=bound)
    replicas = sorted(
        (by_name[c.name] for c in reads.eligible),
        key=lambda e: (
            -(e.health_score if e.health_score is not None else -1),
            e.replication_lag_s if e.replication_lag_s is not None else float("inf"),
            e.name,
        ),
    )
    return RegistryView(
        cluster=cluster.name,
        max_lag_s=bound,
        primary=by_name[writes.eligible[0].name] if writes.eligible else None,
        replicas=tuple(replicas),
        primary_reasons={
            name: why for name, why in writes.excluded.items() if by_name[name].role == Role.PRIMARY
        },
        replica_reasons={
            name: why for name, why in reads.excluded.items() if by_name[name].role == Role.REPLICA
        },
    )


# Reading the registry


@dataclass(frozen=True)
class _Registry:
    clusters: Sequence[Cluster]
    endpoints: dict[int, list[Endpoint]]
    # (cluster name, kind, outcome) -> finished failovers; cluster name -> in progress.
    failovers: dict[tuple[str, str, str], int]
    in_progress: dict[str, int]
    last_failover: dict[int, FailoverEvent]


def _read_registry() -> _Registry:
    """Four queries, whatever the size of the fleet."""
    latest_finished = (
        FailoverEvent.objects.filter(cluster=OuterRef("pk"), finished_at__isnull=False)
        .exclude(outcome=FailoverEvent.Outcome.IN_PROGRESS)
        .order_by("-started_at")
        .values("pk")[:1]
    )
    clusters = list(
        Cluster.objects.annotate(last_failover_id=Subquery(latest_finished)).order_by("name")
    )
    endpoints: dict[int, list[Endpoint]] = {cluster.pk: [] for cluster in clusters}
    for endpoint in Endpoint.objects.defer("password_encrypted").order_by("cluster_id", "name"):
        endpoints.setdefault(endpoint.cluster_id, []).append(endpoint)
    failovers: dict[tuple[str, str, str], int] = {}
    in_progress: dict[str, int] = {}
    counted = FailoverEvent.objects.values("cluster__name", "kind", "outcome").annotate(
        n=Count("pk")
    )
    for row in counted.order_by():
        if row["outcome"] == FailoverEvent.Outcome.IN_PROGRESS:
            in_progress[row["cluster__name"]] = in_progress.get(row["cluster__name"], 0) + row["n"]
        else:
            failovers[(row["cluster__name"], row["kind"], row["outcome"])] = row["n"]
    last_ids = [c.last_failover_id for c in clusters if c.last_failover_id is not None]
    last_failover = {
        event.cluster_id: event
        for event in FailoverEvent.objects.filter(pk__in=last_ids).only(
            "cluster_id", "kind", "outcome", "finished_at"
        )
    }
    return _Registry(clusters, endpoints, failovers, in_progress, last_failover)


# The collector


def _gauge(name: str, documentation: str, labels: Sequence[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=list(labels))


def _counter(name: str, documentation: str, labels: Sequence[str]) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, labels=list(labels))


def process_label() -> str:
    """``host:pid`` of this process: the ``process`` label of every router series."""
    return f"{socket.gethostname()}:{os.getpid()}"


class PgwardenCollector(Collector):
    """Every pgwarden metric family, built when Prometheus scrapes."""

    def collect(self) -> Iterator[Metric]:
        registry_up = _gauge(
            "pgwarden_registry_up",
            "1 when this scrape could read the registry (the control database), else 0: "
            "the endpoint and cluster families are then missing from it.",
            (),
        )
        roles: dict[tuple[str, str], str] = {}
        try:
            registry = _read_registry()
        except DatabaseError:
            logger.exception("metrics: cannot read the registry")
            registry_up.add_metric([], 0)
        else:
            registry_up.add_metric([], 1)
            yield from _endpoint_families(registry)
            yield from _cluster_families(registry)
            roles = {
                (cluster.name, endpoint.name): endpoint.role
                for cluster in registry.clusters
                for endpoint in registry.endpoints.get(cluster.pk, [])
            }
        yield registry_up
        yield from _router_families(roles)


# (key, name, help) of the per-endpoint gauges from the registry, in exposition order;
# the state gauge (one series per state) follows "up".
_ENDPOINT_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("enabled", "pgwarden_endpoint_enabled", "1 when the endpoint is enabled (probed, routable)."),
    (
        "up",
        "pgwarden_endpoint_up",
        "1 when the endpoint is enabled and its last health probe answered, else 0.",
    ),
    (
        "score",
        "pgwarden_endpoint_health_score",
        "Health score 0-100 from the last probe (absent until one is scored).",
    ),
    (
        "latency",
        "pgwarden_endpoint_probe_latency_seconds",
        "Round trip of the last probe that answered.",
    ),
    (
        "lag_bytes",
        "pgwarden_endpoint_replication_lag_bytes",
        "A replica's replay lag behind the primary's WAL position, from the last probe "
        "that answered (absent when unknown, and for the primary).",
    ),
    (
        "lag_seconds",
        "pgwarden_endpoint_replication_lag_seconds",
        "A replica's replay lag in seconds, from the last probe that answered (absent when "
        "unknown, and for the primary).",
    ),
    (
        "failures",
        "pgwarden_endpoint_consecutive_failures",
        "Health probes failed in a row (the endpoint is down at the cluster's threshold).",
    ),
    (
        "recovery",
        "pgwarden_endpoint_in_recovery",
        "1 when the last probe that answered saw the server in recovery (a replica), "
        "0 when not (a primary); absent until one answers.",
    ),
    (
        "mismatch",
        "pgwarden_endpoint_role_mismatch",
        "1 when the last probe contradicts the registered role (never routed to as such).",
    ),
    (
        "checked",
        "pgwarden_endpoint_last_probe_timestamp_seconds",
        "When the endpoint was last probed (Unix time); stale when sweeps have stopped.",
    ),
)


def _endpoint_families(registry: _Registry) -> Iterator[Metric]:
    gauges = {key: _gauge(name, doc, ENDPOINT_LABELS) for key, name, doc in _ENDPOINT_GAUGES}
    state = _gauge(
        "pgwarden_endpoint_state",
        "The endpoint's state: 1 for the current one, 0 for the others.",
        (*ENDPOINT_LABELS, "state"),
    )
    for cluster in registry.clusters:
        for endpoint in registry.endpoints.get(cluster.pk, []):
            labels = [cluster.name, endpoint.name, endpoint.role]
            for name in STATES:
                state.add_metric([*labels, name], int(endpoint.state == name))
            for key, value in _endpoint_samples(endpoint).items():
                if value is not None:
                    gauges[key].add_metric(labels, value)
    yield gauges.pop("enabled")
    yield gauges.pop("up")
    yield state
    yield from gauges.values()


def _endpoint_samples(endpoint: Endpoint) -> dict[str, float | None]:
    """The value of each per-endpoint gauge; None leaves the series out (unknown)."""
    answered = (
        endpoint.last_checked_at is not None
        and endpoint.consecutive_failures == 0
        and not endpoint.last_error
    )
    latency_ms, in_recovery, checked_at = (
        endpoint.last_latency_ms,
        endpoint.in_recovery,
        endpoint.last_checked_at,
    )
    return {
        "enabled": int(endpoint.enabled),
        "up": int(endpoint.enabled and answered),
        "score": endpoint.health_score,
        "latency": None if latency_ms is None else latency_ms / 1000,
        "lag_bytes": endpoint.replication_lag_bytes,
        "lag_seconds": endpoint.replication_lag_s,
        "failures": endpoint.consecutive_failures,
        "recovery": None if in_recovery is None else int(in_recovery),
        "mismatch": int(endpoint.role_mismatch),
        "checked": None if checked_at is None else checked_at.timestamp(),
    }


def _cluster_families(registry: _Registry) -> Iterator[Metric]:
    enabled = _gauge(
        "pgwarden_cluster_enabled_endpoints",
        "Endpoints of the cluster that are enabled.",
        ["cluster"],
    )
    available = _gauge(
        "pgwarden_cluster_available_endpoints",
        "Endpoints the routing rules would send requests to, judged from the registry: "
        "the primary for writes, replicas within the lag bound for reads (circuit "
        "breakers, which are per process, aside).",
        ["cluster"],
    )
    primary = _gauge(
        "pgwarden_cluster_primary_available",
        "1 when the cluster has a primary that takes writes (as GET /clusters/<name>/primary "
        "answers 200), else 0.",
        ["cluster"],
    )
    for cluster in registry.clusters:
        endpoints = registry.endpoints.get(cluster.pk, [])
        view = registry_view(cluster, endpoints)
        enabled.add_metric([cluster.name], sum(1 for e in endpoints if e.enabled))
        available.add_metric(
            [cluster.name], len(view.replicas) + (1 if view.primary is not None else 0)
        )
        primary.add_metric([cluster.name], int(view.primary is not None))
    yield from (enabled, available, primary)
    yield from _failover_families(registry)


def _failover_families(registry: _Registry) -> Iterator[Metric]:
    failovers = _counter(
        "pgwarden_cluster_failovers",
        "Finished failovers and switchovers, by kind and outcome (every combination is "
        "exported, from 0).",
        ["cluster", "kind", "outcome"],
    )
    running = _gauge(
        "pgwarden_cluster_failover_in_progress",
        "Failovers or switchovers of the cluster under way.",
        ["cluster"],
    )
    since = _gauge(
        "pgwarden_cluster_seconds_since_last_failover",
        "Seconds since the latest finished failover or switchover ended, labelled with its "
        "kind and outcome (absent when there has been none).",
        ["cluster", "kind", "outcome"],
    )
    paused = _gauge(
        "pgwarden_cluster_failover_paused",
        "1 while automatic failover of the cluster is paused for maintenance (health checks "
        "and alerts go on), else 0.",
        ["cluster"],
    )
    now = timezone.now()
    for cluster in registry.clusters:
        for kind in FAILOVER_KINDS:
            for outcome in FINISHED_OUTCOMES:
                count = registry.failovers.get((cluster.name, kind, outcome), 0)
                failovers.add_metric([cluster.name, kind, outcome], count)
        running.add_metric([cluster.name], registry.in_progress.get(cluster.name, 0))
        paused.add_metric([cluster.name], int(cluster.paused))
        last = registry.last_failover.get(cluster.pk)
        if last is not None and last.finished_at is not None:
            elapsed = max(0.0, (now - last.finished_at).total_seconds())
            since.add_metric([cluster.name, last.kind, last.outcome], elapsed)
    yield from (failovers, running, since, paused)


# This process's router


def _routed_clusters() -> list[tuple[routing.Router, routing.ClusterRuntime]]:
    """The clusters this process's router has served, without creating anything.

    No router yet (nothing routed in this process) means no router series.
    """
    router = routing.current_router()
    if router is None:
        return []
    return [(router, runtime) for runtime in router.runtimes()]


# (key, name, help) of the router's per-endpoint counters, then of its pool gauges.
_ROUTER_COUNTERS: tuple[tuple[str, str, str], ...] = (
    (
        "requests",
        "pgwarden_router_requests",
        "Attempts this process sent to the endpoint (each retry counts), per process.",
    ),
    (
        "errors",
        "pgwarden_router_errors",
        "Attempts that failed to get a connection or lost it, per process.",
    ),
    (
        "retries",
        "pgwarden_router_retries",
        "Attempts on the endpoint that retried a failed one, per process.",
    ),
)
_POOL_GAUGES: tuple[tuple[str, str, str], ...] = (
    (
        "size",
        "pgwarden_router_pool_size",
        "Connections open in this process's pool for the endpoint (absent without a pool).",
    ),
    ("max_size", "pgwarden_router_pool_max_size", "The pool's maximum size, per process."),
    ("in_use", "pgwarden_router_pool_in_use", "Pool connections checked out right now."),
    ("waiting", "pgwarden_router_pool_waiting", "Requests waiting for a pool connection."),
)


@dataclass(frozen=True)
class _RouterFamilies:
    counters: dict[str, CounterMetricFamily]
    circuit: GaugeMetricFamily
    opened: CounterMetricFamily
    pool: dict[str, GaugeMetricFamily]
    latency: HistogramMetricFamily

    @classmethod
    def empty(cls) -> _RouterFamilies:
        labels = ROUTER_LABELS
        return cls(
            counters={key: _counter(name, doc, labels) for key, name, doc in _ROUTER_COUNTERS},
            circuit=_gauge(
                "pgwarden_router_circuit_state",
                "This process's circuit breaker for the endpoint: 1 for the current state.",
                (*labels, "state"),
            ),
            opened=_counter(
                "pgwarden_router_circuit_opened",
                "Times this process's circuit breaker for the endpoint opened.",
                labels,
            ),
            pool={key: _gauge(name, doc, labels) for key, name, doc in _POOL_GAUGES},
            latency=HistogramMetricFamily(
                "pgwarden_router_query_duration_seconds",
                "Time of each attempt the endpoint answered (a result or an SQL error), per "
                "process.",
                labels=list(labels),
            ),
        )

    def add(
        self,
        labels: list[str],
        snapshot: routing.StatsSnapshot | None,
        breaker: CircuitBreaker | None,
        pool: PoolStats | None,
    ) -> None:
        """One endpoint's series; no stats, breaker or pool yet means nothing sent there."""
        for key, counter in self.counters.items():
            counter.add_metric(labels, getattr(snapshot, key) if snapshot else 0)
        self.latency.add_metric(labels, *_histogram(snapshot))
        current, opened_count = CLOSED, 0
        if breaker is not None:
            circuit = breaker.snapshot()
            current, opened_count = circuit.state, circuit.opened_count
        for name in CIRCUIT_STATES:
            self.circuit.add_metric([*labels, name], int(current == name))
        self.opened.add_metric(labels, opened_count)
        if pool is not None:
            for key, gauge in self.pool.items():
                gauge.add_metric(labels, getattr(pool, key))

    def __iter__(self) -> Iterator[Metric]:
        yield from self.counters.values()
        yield from (self.circuit, self.opened)
        yield from self.pool.values()
        yield self.latency


def _router_families(roles: dict[tuple[str, str], str]) -> Iterator[Metric]:
    process = process_label()
    routed = _routed_clusters()
    clusters = _gauge(
        "pgwarden_router_clusters",
        "Clusters this process has routed requests to (the router series it exports); "
        "present in every scrape, so the process label shows which process answered.",
        ["process"],
    )
    clusters.add_metric([process], len(routed))
    families = _RouterFamilies.empty()
    for router, runtime in routed:
        view = runtime.view
        for endpoint in view.endpoints:
            role = roles.get((view.name, endpoint.name), endpoint.role)
            stats = runtime.stats.get(endpoint.name)
            pool = router.pools.peek(endpoint.id)
            families.add(
                [view.name, endpoint.name, role, process],
                stats.snapshot() if stats is not None else None,
                runtime.breakers.get(endpoint.name),
                pool.stats() if pool is not None else None,
            )
    yield clusters
    yield from families


def _histogram(
    snapshot: routing.StatsSnapshot | None,
) -> tuple[list[tuple[str, float]], float]:
    """Cumulative buckets labelled in seconds, and the sum in seconds."""
    counts: Iterable[int] = snapshot.latency_buckets if snapshot else (0,) * len(_BUCKET_LABELS)
    buckets: list[tuple[str, float]] = []
    total = 0
    for label, count in zip(_BUCKET_LABELS, counts, strict=True):
        total += count
        buckets.append((label, total))
    return buckets, (snapshot.latency_sum_ms / 1000 if snapshot else 0.0)


# Exposition

REGISTRY = CollectorRegistry()
REGISTRY.register(PgwardenCollector())


def render() -> bytes:
    """The Prometheus text exposition of every pgwarden metric, built now."""
    return generate_latest(REGISTRY)


__all__ = [
    "REGISTRY",
    "PgwardenCollector",
    "RegistryView",
    "candidate",
    "process_label",
    "registry_view",
    "render",
]
