"""Routing overhead, classification cost and mixed throughput, each beside its baseline."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import pglast
import psycopg
from psycopg_pool import ConnectionPool

from endpoints import routing
from endpoints.core import classify as classify_module
from endpoints.devstack.localcluster import LocalPostgresCluster
from endpoints.models import Cluster, Endpoint
from endpoints.routing import topology

Row = tuple[str, str, str, str, str]
CLUSTER = "local"


def run(cluster: LocalPostgresCluster, *, quick: bool) -> list[Row]:
    with psycopg.connect(**cluster.conninfo("primary"), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_t")
        conn.execute("CREATE TABLE bench_t (id bigserial PRIMARY KEY, v int)")
    cluster.wait_for_replay()
    rows: list[Row] = []
    rows += routing_overhead(iterations=2_000 if quick else 20_000)
    rows += classification_cost(statements=500 if quick else 3_000)
    rows += mixed_throughput(seconds=2.0 if quick else 6.0)
    return rows


def _set_read_preference(preference: str) -> None:
    Cluster.objects.filter(name=CLUSTER).update(read_preference=preference)
    topology.notify_changed()


def _raw_pool(endpoint_name: str, max_size: int = 10) -> ConnectionPool[Any]:
    endpoint = Endpoint.objects.select_related("cluster").get(
        cluster__name=CLUSTER, name=endpoint_name
    )
    pool: ConnectionPool[Any] = ConnectionPool(
        kwargs={**endpoint.connection_info().connect_kwargs(), "autocommit": True},
        min_size=1,
        max_size=max_size,
        open=True,
    )
    pool.wait()
    return pool


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def routing_overhead(iterations: int) -> list[Row]:
    """``SELECT 1`` through execute() vs the same query on a raw pool to the same endpoint."""
    _set_read_preference("primary")
    pool = _raw_pool("primary")

    def raw() -> None:
        with pool.connection() as conn:
            conn.execute("SELECT 1").fetchall()

    def routed() -> None:
        routing.execute(CLUSTER, "SELECT 1")

    try:
        for _ in range(500):  # warm both paths: pools, snapshot, classification cache
            raw()
            routed()
        raw_times: list[float] = []
        routed_times: list[float] = []
        # Strictly alternating calls, so drift (CPU frequency, other load) hits both alike,
        # and each goes first half of the time, so neither gains from the other's warm-up.
        clock = time.perf_counter
        for i in range(iterations):
            first, second = (raw, routed) if i % 2 == 0 else (routed, raw)
            t0 = clock()
            first()
            t1 = clock()
            second()
            t2 = clock()
            a, b = (t1 - t0) * 1e6, (t2 - t1) * 1e6
            raw_times.append(a if first is raw else b)
            routed_times.append(b if first is raw else a)
    finally:
        pool.close()
    raw_median, routed_median = statistics.median(raw_times), statistics.median(routed_times)
    raw_p99, routed_p99 = _percentile(raw_times, 0.99), _percentile(routed_times, 0.99)
    return [
        (
            "SELECT 1 latency, median (µs)",
            f"{routed_median:.1f}",
            f"{raw_median:.1f}",
            f"{routed_median / raw_median:.3f}",
            "<= 1.10",
        ),
        (
            "SELECT 1 latency, p99 (µs)",
            f"{routed_p99:.1f}",
            f"{raw_p99:.1f}",
            f"{routed_p99 / raw_p99:.3f}",
            "",
        ),
    ]


def classification_cost(statements: int) -> list[Row]:
    """Cold: a statement never seen (one pglast parse + the tree walk). Cached: a repeat."""
    # Distinct texts, so each one misses the cache; they are parsed, never executed.
    texts = [
        f"SELECT o.id, sum(l.qty * l.price) FROM orders o JOIN lines l ON l.order_id = o.id "  # noqa: S608
        f"WHERE o.customer = {i} AND o.created > now() - interval '{i % 30} days' "
        f"GROUP BY o.id ORDER BY 2 DESC LIMIT {i % 50 + 1}"
        for i in range(statements)
    ]
    classify_module.classify.cache_clear()
    t0 = time.perf_counter()
    for text in texts:
        classify_module.classify(text)
    cold = (time.perf_counter() - t0) / statements * 1e6

    t0 = time.perf_counter()
    for text in texts:
        pglast.parse_sql(text)
    parse_only = (time.perf_counter() - t0) / statements * 1e6

    repeats = 200_000
    hot = texts[0]
    t0 = time.perf_counter()
    for _ in range(repeats):
        classify_module.classify(hot)
    cached = (time.perf_counter() - t0) / repeats * 1e6
    return [
        (
            "classification, cold (µs/statement)",
            f"{cold:.1f}",
            f"{parse_only:.1f} (pglast parse alone)",
            f"{cold / parse_only:.2f}",
            "about one parse",
        ),
        (
            "classification, cached (µs/statement)",
            f"{cached:.2f}",
            f"{cold:.1f} (cold)",
            f"{cached / cold:.4f}",
            "a dict lookup",
        ),
    ]


def mixed_throughput(seconds: float, threads: int = 8) -> list[Row]:
    """8 threads, 90% reads / 10% writes: router (reads spread to replicas) vs one raw pool."""
    _set_read_preference("secondary_preferred")
    pool = _raw_pool("primary", max_size=threads)

    def raw_op(n: int) -> None:
        with pool.connection() as conn:
            if n % 10 == 0:
                conn.execute("INSERT INTO bench_t (v) VALUES (%s)", [n])
            else:
                conn.execute("SELECT v FROM bench_t WHERE id = %s", [n]).fetchall()

    def routed_op(n: int) -> None:
        if n % 10 == 0:
            routing.execute(CLUSTER, "INSERT INTO bench_t (v) VALUES (%s)", [n])
        else:
            routing.execute(CLUSTER, "SELECT v FROM bench_t WHERE id = %s", [n])

    try:
        for n in range(200):
            raw_op(n)
            routed_op(n)
        raw_rate = _throughput(raw_op, threads, seconds)
        routed_rate = _throughput(routed_op, threads, seconds)
    finally:
        pool.close()
    return [
        (
            f"{threads} threads, 90% reads / 10% writes (ops/s)",
            f"{routed_rate:,.0f}",
            f"{raw_rate:,.0f} (raw pool, primary only)",
            f"{routed_rate / raw_rate:.2f}",
            "",
        )
    ]


def _throughput(op: Callable[[int], None], threads: int, seconds: float) -> float:
    stop = threading.Event()
    counts = [0] * threads
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        n = index
        try:
            while not stop.is_set():
                op(n)
                n += threads
                counts[index] += 1
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    t0 = time.perf_counter()
    for thread in workers:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in workers:
        thread.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return sum(counts) / elapsed
