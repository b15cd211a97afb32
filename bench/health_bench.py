"""Sweep time at 10, 100 and 500 endpoints with 20% of them hung, against the probe timeout.

The issue's target: a sweep probes every endpoint at once, so it costs about one probe
timeout (the hung endpoints' share) however many endpoints there are; under 1.5 x
``probe_timeout_s`` at every size.

What is measured: ``endpoints.control.sweep`` on a registered cluster, end to end
(probes, the HealthCheck rows, the Endpoint updates, the topology notice and the alert
evaluation), with the default probe timeout of 2 s, median of several sweeps after one
warm-up sweep (the first sweep of a cluster also moves every endpoint from unknown to
healthy).

The endpoints: one primary, 20% hung (a local TCP listener that accepts connections and
never answers, as a frozen host would), and the rest replicas. Every probe opens a fresh
connection with SCRAM authentication, so 400 healthy endpoints mean 400 concurrent
connection start-ups: more than the 100 connections a default server accepts. The
healthy replicas therefore all point at one real streaming replica, started here (with
its primary) with ``max_connections`` raised to fit; the primary endpoint points at that
primary. One server taking every healthy probe is harsher than a real fleet, where each
endpoint is its own server: the server forks hundreds of backends at once on the same
cores that run the sweep.

So a last row shows what the machine itself can do: the 400 healthy probes of the
largest size alone, through pgwarden's probe (``check_endpoints``, all at once, no
deadline in reach) beside the same connections and query made with plain psycopg. When
those take longer than the probe timeout, the largest sweep's healthy endpoints cannot
all answer in time on this machine whatever the sweep does: the sweep still ends on
time, leaving the others for the next sweep, and its row says how many answered (the
fewest over the measured sweeps).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from endpoints import control
from endpoints.devstack.localcluster import LocalPostgresCluster, SilentListener
from endpoints.health.probe import PROBE_SQL, check_endpoints
from endpoints.models import Cluster, Endpoint, Role

Row = tuple[str, str, str, str, str]

SIZES = (10, 100, 500)
HUNG_SHARE = 0.2
PROBE_TIMEOUT_S = 2.0  # the model's default
# Room for the largest size's healthy probes at once, plus a margin.
MAX_CONNECTIONS = 600
TARGET_RATIO = 1.5


def run(quick: bool = False) -> list[Row]:
    """One row per size: the sweep's median time beside the probe timeout."""
    base = Path(tempfile.mkdtemp(prefix="pgwarden-bench-sweep-"))
    # The postgres OS user runs the servers and must reach their directories.
    os.chmod(base, 0o755)  # noqa: S103
    servers = LocalPostgresCluster(base / "pg", replicas=1)
    hung = SilentListener(backlog=1024)
    try:
        print("starting PostgreSQL (primary + 1 replica) for the sweep bench", file=sys.stderr)
        servers.start()
        _raise_max_connections(servers, MAX_CONNECTIONS)
        runs = 1 if quick else 5
        rows = [sweep_time(servers, hung.port, size, runs=runs) for size in SIZES]
        rows.append(probe_capacity(servers, round(max(SIZES) * (1 - HUNG_SHARE)), runs=runs))
        return rows
    finally:
        hung.close()
        servers.destroy()
        shutil.rmtree(base, ignore_errors=True)


def _raise_max_connections(servers: LocalPostgresCluster, connections: int) -> None:
    # A replica needs max_connections at least the primary's: both get it, then a restart.
    for node in servers.nodes:
        with psycopg.connect(**servers.conninfo(node), autocommit=True) as conn:
            conn.execute(f"ALTER SYSTEM SET max_connections = {int(connections)}")
    servers.stop()
    servers.start()


def sweep_time(servers: LocalPostgresCluster, hung_port: int, size: int, *, runs: int) -> Row:
    cluster = _register(servers, hung_port, size)
    hung = round(size * HUNG_SHARE)
    try:
        control.sweep(cluster)  # warm-up: unknown -> healthy for every endpoint
        times: list[float] = []
        answered: list[int] = []
        for _ in range(runs):
            started = time.perf_counter()
            observations = control.sweep(cluster)
            times.append(time.perf_counter() - started)
            answered.append(sum(o.result.ok for o in observations))
    finally:
        cluster.delete()
    median = statistics.median(times)
    value = f"{median:.2f}"
    if min(answered) != size - hung:
        # The bench measures nothing if healthy endpoints failed (e.g. too many clients).
        value += f" ({min(answered)} of {size - hung} healthy answered)"
    return (
        f"sweep time (s), {size} endpoints, 20% hung",
        value,
        f"{PROBE_TIMEOUT_S:.2f} (probe timeout)",
        f"{median / PROBE_TIMEOUT_S:.2f}",
        f"< {TARGET_RATIO}",
    )


def _register(
    servers: LocalPostgresCluster, hung_port: int, size: int, hung_share: float = HUNG_SHARE
) -> Cluster:
    """A cluster of ``size`` endpoints: a primary, ``hung_share`` hung, the rest replicas.

    With no hung share there is no primary either: every endpoint is a healthy replica.
    """
    cluster = Cluster.objects.create(
        name=f"bench-sweep-{size}-{round(hung_share * 100)}",
        probe_timeout_s=PROBE_TIMEOUT_S,
        # Nothing here may act on the servers: only the sweep itself is measured.
        auto_failover=False,
        fence_writes=False,
    )
    hung = round(size * hung_share)
    primary, replica = servers.primary, servers.replicas[0]
    layout = ([("primary", Role.PRIMARY, primary.port)] if hung else []) + [
        (f"hung{i}", Role.REPLICA, hung_port) for i in range(hung)
    ]
    layout += [(f"replica{i}", Role.REPLICA, replica.port) for i in range(size - len(layout))]
    endpoints = []
    for name, role, port in layout:
        endpoint = Endpoint(
            cluster=cluster,
            name=name,
            host=primary.host,
            port=port,
            role=role,
            dbname=servers.dbname,
            user=servers.user,
            sslmode="disable",
        )
        endpoint.set_password(servers.password)
        endpoints.append(endpoint)
    Endpoint.objects.bulk_create(endpoints)
    return cluster


def probe_capacity(servers: LocalPostgresCluster, count: int, *, runs: int) -> Row:
    """``count`` healthy probes at once: pgwarden's probe beside plain psycopg."""
    cluster = _register(servers, hung_port=0, size=count, hung_share=0.0)
    endpoints = list(cluster.endpoints.select_related("cluster"))
    replica = servers.replicas[0]
    kwargs: dict[str, Any] = {
        "host": replica.host,
        "port": replica.port,
        "dbname": servers.dbname,
        "user": servers.user,
        "password": servers.password,
        "sslmode": "disable",
        "autocommit": True,
    }

    async def one() -> None:
        conn = await psycopg.AsyncConnection.connect(**kwargs)
        try:
            await (await conn.execute(PROBE_SQL)).fetchone()
        finally:
            await conn.close()

    async def plain() -> None:
        await asyncio.gather(*(one() for _ in range(count)))

    probe_times: list[float] = []
    plain_times: list[float] = []
    try:
        for _ in range(runs):
            started = time.perf_counter()
            check_endpoints(endpoints, timeout_s=60.0)
            probe_times.append(time.perf_counter() - started)
            time.sleep(0.5)  # let the server reap the previous burst's backends
            started = time.perf_counter()
            asyncio.run(plain())
            plain_times.append(time.perf_counter() - started)
            time.sleep(0.5)
    finally:
        cluster.delete()
    ours, theirs = statistics.median(probe_times), statistics.median(plain_times)
    return (
        f"{count} healthy probes at once, one local server (s)",
        f"{ours:.2f}",
        f"{theirs:.2f} (plain psycopg)",
        f"{ours / theirs:.2f}",
        "about 1",
    )
