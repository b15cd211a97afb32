"""Failover time and acknowledged writes lost, with default settings, on a cluster of its own.

Detection is driven as production drives it: a health sweep every ``check_interval_s``
(which hands a primary down for ``failure_threshold`` probes to automatic failover), while
a writer thread sends routed INSERTs back to back. Each run kills the primary's postmaster
with SIGKILL at a random moment between two sweeps and measures until the writer's first
acknowledged write; the killed node is then rebuilt as a replica of the new primary and
re-admitted, so the next run starts from a whole cluster again. Failover promotes only a
replica that a sweep saw streaming from the primary (``Endpoint.upstream``), so each run
waits for the sweeps to have recorded that before the kill, as beat's sweeps every second
have in production.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from django.db import connection
from psycopg import sql

from endpoints import control, failover, routing
from endpoints.core.waiting import poll_until
from endpoints.devstack.localcluster import LocalPostgresCluster
from endpoints.models import Cluster, Endpoint, Role, State
from endpoints.services.registration import register_local_cluster

Row = tuple[str, str, str, str, str]
CLUSTER = "bench-failover"
PATRONI_DEFAULT_S = 30.0  # ttl 30 s, loop_wait 10 s: 30-45 s to fail over
WARM_UP_S = 1.5
# How long the writer keeps going once writes succeed again (late acknowledgements count).
AFTER_FAILOVER_S = 0.5
RUN_TIMEOUT_S = 60.0


def run(quick: bool) -> list[Row]:
    runs = 2 if quick else 5
    local = LocalPostgresCluster(Path(tempfile.mkdtemp(prefix="pgwarden-bench-fo-")), replicas=2)
    try:
        local.start()
        Cluster.objects.filter(name=CLUSTER).delete()
        register_local_cluster(local, CLUSTER)
        with psycopg.connect(**local.conninfo(local.primary), autocommit=True) as conn:
            conn.execute("CREATE TABLE bench_failover (id bigserial PRIMARY KEY, note text)")
        local.wait_for_replay()

        times = []
        for index in range(runs):
            times.append(_kill_primary_and_fail_over(local, f"time{index}").first_write_s)
            _rejoin_killed_primary(local)
        synchronous = _kill_primary_and_fail_over(local, "sync", synchronous=True)
        _rejoin_killed_primary(local)
        asynchronous = _kill_primary_and_fail_over(local, "async", synchronous=False)
    finally:
        routing.reset_router()
        local.destroy()
        Cluster.objects.filter(name=CLUSTER).delete()

    median = statistics.median(times)
    shown = ", ".join(f"{t:.2f}" for t in times)
    return [
        (
            "failover time, kill -9 to first routed write (s)",
            f"{median:.2f} (runs: {shown})",
            "Patroni defaults ~30-45 s",
            f"{median / PATRONI_DEFAULT_S:.3f}",
            "<= 5 s",
        ),
        (
            "acknowledged writes lost, synchronous replication",
            f"{len(synchronous.lost)} of {synchronous.acknowledged}",
            "",
            "",
            "0",
        ),
        (
            "acknowledged writes lost, asynchronous replication",
            f"{len(asynchronous.lost)} of {asynchronous.acknowledged}",
            "",
            "",
            "(reported)",
        ),
    ]


@dataclass
class _Outcome:
    first_write_s: float
    acknowledged: int
    lost: list[str] = field(default_factory=list)


class _Writer(threading.Thread):
    """Routed INSERTs back to back; remembers which ones were acknowledged, and when."""

    def __init__(self, tag: str) -> None:
        super().__init__(name=f"bench-writer-{tag}", daemon=True)
        self.tag = tag
        # (when, note, endpoint that acknowledged it)
        self.acknowledged: list[tuple[float, str, str]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            n = 0
            while not self.stop.is_set():
                note = f"{self.tag}-{n}"
                n += 1
                try:
                    result = routing.execute(
                        CLUSTER, "INSERT INTO bench_failover (note) VALUES (%s)", [note]
                    )
                except routing.RoutingError:
                    time.sleep(0.005)  # refused, down or unknown outcome: not acknowledged
                else:
                    self.acknowledged.append((time.monotonic(), note, result.endpoint))
        finally:
            connection.close()

    def first_after(self, moment: float, old_primary: str) -> float | None:
        """When the first write acknowledged by another endpoint than ``old_primary`` came."""
        return next(
            (at for at, _, where in self.acknowledged if at > moment and where != old_primary),
            None,
        )


class _HealthLoop(threading.Thread):
    """Celery beat and the sweep task, reduced to a loop: one sweep every check interval."""

    def __init__(self) -> None:
        super().__init__(name="bench-health", daemon=True)
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            next_tick = time.monotonic()
            while not self.stop.is_set():
                cluster = Cluster.objects.get(name=CLUSTER)
                control.sweep(cluster)
                primary = cluster.endpoints.filter(role=Role.PRIMARY, enabled=True).first()
                # control.sweep hands a down primary to failover itself; should it not, this
                # is the same hand-over (a no-op once the new primary answers).
                if (
                    primary is not None
                    and primary.consecutive_failures >= cluster.failure_threshold
                ):
                    failover.on_primary_down(cluster)
                next_tick += cluster.check_interval_s
                self.stop.wait(max(0.0, next_tick - time.monotonic()))
        finally:
            connection.close()


def _kill_primary_and_fail_over(
    local: LocalPostgresCluster, tag: str, *, synchronous: bool | None = None
) -> _Outcome:
    old = _registered_primary()
    if synchronous is not None:
        _set_synchronous(local, old, synchronous)
    health_loop, writer = _HealthLoop(), _Writer(tag)
    health_loop.start()
    writer.start()
    try:
        _wait_for(lambda: len(writer.acknowledged) > 20, "writes before the kill")
        _wait_for(_replicas_recorded_streaming, "sweeps recording the replicas streaming")
        time.sleep(WARM_UP_S + random.uniform(0, 1))  # noqa: S311 - a random phase, not a secret
        local.kill_node(old)
        # Once the postmaster is gone (kill_node waits for that, a few ms at most).
        killed_at = time.monotonic()
        _wait_for(lambda: writer.first_after(killed_at, old) is not None, "a write after the kill")
        time.sleep(AFTER_FAILOVER_S)
    finally:
        writer.stop.set()
        health_loop.stop.set()
        writer.join(30)
        health_loop.join(30)
    first = writer.first_after(killed_at, old)
    assert first is not None
    new = _registered_primary()
    with psycopg.connect(**local.conninfo(new), autocommit=True) as conn:
        present = {
            note
            for (note,) in conn.execute(
                "SELECT note FROM bench_failover WHERE note LIKE %s", [f"{tag}-%"]
            )
        }
    return _Outcome(
        first_write_s=first - killed_at,
        acknowledged=len(writer.acknowledged),
        lost=[note for _, note, _ in writer.acknowledged if note not in present],
    )


def _set_synchronous(local: LocalPostgresCluster, primary: str, synchronous: bool) -> None:
    """Commits wait for one replica to flush (``ANY 1``), or for none."""
    standbys = [node.name for node in local.nodes if node.name != primary]
    with psycopg.connect(**local.conninfo(primary), autocommit=True) as conn:
        if synchronous:
            names = sql.SQL(", ").join(sql.Identifier(name) for name in standbys)
            conn.execute(
                sql.SQL("ALTER SYSTEM SET synchronous_standby_names = {}").format(
                    sql.Literal(sql.SQL("ANY 1 ({})").format(names).as_string(conn))
                )
            )
        else:
            conn.execute("ALTER SYSTEM RESET synchronous_standby_names")
        conn.execute("SELECT pg_reload_conf()")
        expected = "quorum" if synchronous else "async"
        _wait_for(
            lambda: (
                conn.execute(
                    "SELECT count(*) FROM pg_stat_replication WHERE sync_state = %s", [expected]
                ).fetchone()
                == (len(standbys),)
            ),
            f"replicas in {expected} replication",
        )


def _rejoin_killed_primary(local: LocalPostgresCluster) -> None:
    """Rebuild the fenced old primary from the new one and re-admit it, as an operator would."""
    new = _registered_primary()
    fenced = Endpoint.objects.select_related("cluster").get(
        cluster__name=CLUSTER, state=State.FENCED
    )
    local.rebuild_as_replica(fenced.name, new)
    failover.readmit(fenced)


def _replicas_recorded_streaming() -> bool:
    """Whether sweeps recorded every enabled, unfenced replica streaming from the primary."""
    primary = Endpoint.objects.get(cluster__name=CLUSTER, role=Role.PRIMARY, enabled=True)
    replicas = Endpoint.objects.filter(
        cluster__name=CLUSTER, role=Role.REPLICA, enabled=True
    ).exclude(state=State.FENCED)
    return not replicas.exclude(upstream=primary).exists()


def _registered_primary() -> str:
    return str(Endpoint.objects.get(cluster__name=CLUSTER, role=Role.PRIMARY, enabled=True).name)


def _wait_for(check: Callable[[], bool], what: str, timeout_s: float = RUN_TIMEOUT_S) -> None:
    if not poll_until(check, timeout_s=timeout_s, interval_s=0.01):
        raise RuntimeError(f"failover bench: no {what} within {timeout_s:g} s")
