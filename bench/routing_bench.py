"""Routing overhead, classification cost and mixed throughput, each beside its baseline.

Routing overhead is measured two ways. *Alternating*: one routed call, one raw call, in
turn, each going first half the time. *Batches* (issue 14): 100 calls of one side, then
100 of the other, the order alternating, for many rounds, reporting the median of each
side's batch means, while a real Celery worker and beat sweep the same cluster every
second, against an autocommit ``psycopg_pool`` with ``dict_row`` to the same endpoint.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pglast
import psycopg
from django.utils import timezone
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from endpoints import routing
from endpoints.core import classify as classify_module
from endpoints.core.waiting import poll_until
from endpoints.devstack.localcluster import LocalPostgresCluster
from endpoints.devstack.localstack import Supervisor
from endpoints.models import Cluster, Endpoint, HealthCheck
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
    with sweeping_every_second():
        rows += batch_overhead(rounds=20 if quick else BATCH_ROUNDS)
    rows += classification_cost(statements=500 if quick else 3_000)
    rows += mixed_throughput(seconds=2.0 if quick else 6.0)
    return rows


def _set_read_preference(preference: str) -> None:
    Cluster.objects.filter(name=CLUSTER).update(read_preference=preference)
    topology.notify_changed()


def _raw_pool(
    endpoint_name: str, max_size: int = 10, *, dict_rows: bool = False
) -> ConnectionPool[Any]:
    endpoint = Endpoint.objects.select_related("cluster").get(
        cluster__name=CLUSTER, name=endpoint_name
    )
    kwargs: dict[str, Any] = {**endpoint.connection_info().connect_kwargs(), "autocommit": True}
    if dict_rows:
        kwargs["row_factory"] = dict_row
    pool: ConnectionPool[Any] = ConnectionPool(
        kwargs=kwargs,
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


BATCH_SIZE = 100
BATCH_ROUNDS = 300


@contextmanager
def sweeping_every_second() -> Iterator[None]:
    """A real Celery worker and beat, sweeping the bench cluster every second meanwhile."""
    Cluster.objects.filter(name=CLUSTER).update(check_interval_s=1.0)
    topology.notify_changed()
    supervisor = Supervisor()
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="pgwarden-bench-beat-") as beat_dir:
        celery = [str(bin_dir / "celery"), "--app=project"]
        try:
            supervisor.spawn("worker", [*celery, "worker", "--loglevel=WARNING", "--concurrency=2"])
            supervisor.spawn(
                "beat",
                [*celery, "beat", "--loglevel=WARNING", f"--schedule={beat_dir}/schedule"],
            )
            since = timezone.now()
            swept = poll_until(
                lambda: (
                    HealthCheck.objects.filter(
                        endpoint__cluster__name=CLUSTER, checked_at__gte=since
                    ).count()
                    >= 6
                ),  # two sweeps of the three endpoints
                timeout_s=90,
                interval_s=0.5,
            )
            if not swept:
                raise RuntimeError("the Celery worker and beat never swept the bench cluster")
            yield
        finally:
            supervisor.shutdown()


def _batches(
    routed: Callable[[int], object], raw: Callable[[int], object], rounds: int
) -> tuple[float, float]:
    """Median over ``rounds`` of each side's mean µs per call, in batches of BATCH_SIZE.

    Each round runs a batch of one side, then one of the other, the order alternating, so
    a sweep landing in the middle of a round hits either side as often.
    """
    means: dict[Callable[[int], object], list[float]] = {routed: [], raw: []}
    clock = time.perf_counter
    n = 0
    for round_index in range(rounds):
        for side in (routed, raw) if round_index % 2 == 0 else (raw, routed):
            t0 = clock()
            for _ in range(BATCH_SIZE):
                side(n)
                n += 1
            means[side].append((clock() - t0) / BATCH_SIZE * 1e6)
    return statistics.median(means[routed]), statistics.median(means[raw])


def batch_overhead(rounds: int) -> list[Row]:
    """Reads and writes through execute() vs an autocommit dict_row pool, batch method."""
    _set_read_preference("primary")
    pool = _raw_pool("primary", dict_rows=True)

    def raw_read(n: int) -> object:
        with pool.connection() as conn:
            return conn.execute("SELECT 1").fetchall()

    def routed_read(n: int) -> object:
        return routing.execute(CLUSTER, "SELECT 1")

    def raw_write(n: int) -> object:
        with pool.connection() as conn:
            return conn.execute("INSERT INTO bench_t (v) VALUES (%s)", [n]).rowcount

    def routed_write(n: int) -> object:
        return routing.execute(CLUSTER, "INSERT INTO bench_t (v) VALUES (%s)", [n], intent="write")

    try:
        for n in range(500):  # warm both paths: pools, snapshot, prepared statements
            raw_read(n), routed_read(n), raw_write(n), routed_write(n)
        read = _batches(routed_read, raw_read, rounds)
        write = _batches(routed_write, raw_write, rounds)
    finally:
        pool.close()
    label = "batches, sweeping every 1 s"
    return [
        (
            f"SELECT 1 latency, {label} (µs)",
            f"{read[0]:.1f}",
            f"{read[1]:.1f} (autocommit dict_row pool)",
            f"{read[0] / read[1]:.3f}",
            "<= 1.10",
        ),
        (
            f"INSERT latency, intent=write, {label} (µs)",
            f"{write[0]:.1f}",
            f"{write[1]:.1f} (autocommit dict_row pool)",
            f"{write[0] / write[1]:.3f}",
            "<= 1.10",
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
