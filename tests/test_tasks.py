"""Celery tasks, executed by real workers and a real beat through the real Redis broker."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from endpoints import coordination
from endpoints.coordination import DISPATCH_KEY, SWEEP_LOCK_KEY
from endpoints.core.waiting import poll_until
from endpoints.health import (
    claim_due_sweeps,
    dispatch_claim_ttl_s,
    prune_health_checks,
    sweep_expiry_s,
)
from endpoints.models import Cluster, Endpoint, HealthCheck, Role
from endpoints.tasks import check_connection, dispatch_sweeps, sweep_cluster
from endpoints.tasks import prune_health_checks as prune_task
from tests.helpers import ROOT
from tests.helpers.processes import stop_process
from tests.helpers.workers import running_beat, running_worker

pytestmark = pytest.mark.django_db(transaction=True)


# check_connection


def test_check_connection_runs_on_a_worker_against_the_live_primary(
    celery_worker, local_cluster, pg_cluster
) -> None:
    primary = local_cluster.endpoints.get(name="primary")

    result = check_connection.delay(primary.pk).get(timeout=30)

    assert result["ok"] is True
    assert result["endpoint"] == "local/primary"
    assert result["in_recovery"] is False
    assert result["server_version"].startswith("15")
    assert result["latency_ms"] > 0
    assert pg_cluster.password not in json.dumps(result)


def test_check_connection_sees_a_replica_in_recovery(celery_worker, local_cluster) -> None:
    replica = local_cluster.endpoints.get(name="replica2")

    result = check_connection.delay(replica.pk).get(timeout=30)

    assert (result["ok"], result["in_recovery"]) == (True, True)


def test_check_connection_reports_a_dead_endpoint_without_its_password(
    celery_worker, local_cluster, closed_port
) -> None:
    gone = Endpoint(
        cluster=local_cluster, name="gone", host="127.0.0.1", port=closed_port, role=Role.REPLICA
    )
    gone.set_password("a-password-nobody-may-see")
    gone.save()

    result = check_connection.delay(gone.pk).get(timeout=30)

    assert result["ok"] is False
    assert str(closed_port) in result["error"]
    assert "a-password-nobody-may-see" not in json.dumps(result)


# Sweeps: the lock and the dispatcher


def add_hung_endpoint(cluster: Cluster, port: int, probe_timeout_s: float) -> None:
    Cluster.objects.filter(pk=cluster.pk).update(probe_timeout_s=probe_timeout_s)
    Endpoint.objects.create(cluster=cluster, name="hung", host="127.0.0.1", port=port)


def test_two_sweeps_of_one_cluster_at_once_one_runs_and_the_other_is_skipped(
    local_cluster: Cluster, silent_port: int, redis_server: Any
) -> None:
    # The hung endpoint holds each sweep for one probe timeout: long enough to collide.
    add_hung_endpoint(local_cluster, silent_port, probe_timeout_s=1.5)
    reports: list[dict[str, Any]] = []

    def run() -> None:
        reports.append(sweep_cluster(local_cluster.pk))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    swept = [r for r in reports if r["swept"]]
    skipped = [r for r in reports if not r["swept"]]
    assert len(swept) == 1, reports
    assert len(skipped) == 1, reports
    assert skipped[0]["skipped_because"] == "another sweep of this cluster is running"
    assert (swept[0]["endpoints"], swept[0]["available"]) == (4, 3)
    assert swept[0]["elapsed_s"] >= 1.5
    assert HealthCheck.objects.filter(endpoint__cluster=local_cluster).count() == 4
    # The lock is released at the end: the next sweep runs.
    assert sweep_cluster(local_cluster.pk)["swept"]


def test_a_sweep_of_a_removed_cluster_is_skipped(db: None, redis_server: Any) -> None:
    report = sweep_cluster(987654)
    assert (report["swept"], report["skipped_because"]) == (False, "the cluster was removed")


def test_each_cluster_is_claimed_once_per_interval(redis_server: Any) -> None:
    client = coordination.redis_client()
    clusters = [(9001, 1.0), (9002, 5.0)]
    for cluster_id, _ in clusters:
        client.delete(DISPATCH_KEY.format(cluster_id=cluster_id))

    assert claim_due_sweeps(clusters) == [9001, 9002]
    # Another dispatcher (a second beat, or one restarted) right after: nothing is due.
    assert claim_due_sweeps(clusters) == []
    time.sleep(dispatch_claim_ttl_s(1.0) + 0.05)
    assert claim_due_sweeps(clusters) == [9001]
    assert claim_due_sweeps([]) == []


def test_claims_and_expiries_follow_the_interval_at_beats_one_second_tick() -> None:
    assert dispatch_claim_ttl_s(1.0) == pytest.approx(0.8)
    assert dispatch_claim_ttl_s(10.0) == pytest.approx(9.8)
    assert dispatch_claim_ttl_s(0.2) == pytest.approx(0.1)
    assert sweep_expiry_s(0.5) == 1.0
    assert sweep_expiry_s(5.0) == 5.0


def test_dispatch_sends_sweeps_only_for_clusters_that_are_due(
    local_cluster: Cluster, redis_server: Any
) -> None:
    client = coordination.redis_client()
    slow = Cluster.objects.create(name="slow", check_interval_s=3600)
    for cluster in (local_cluster, slow):
        client.delete(DISPATCH_KEY.format(cluster_id=cluster.pk))
    client.set(DISPATCH_KEY.format(cluster_id=slow.pk), "0", px=60_000)  # swept a moment ago

    assert dispatch_sweeps() == [local_cluster.pk]
    assert dispatch_sweeps() == []


# Retention


def add_checks(endpoint: Endpoint, at: datetime, count: int) -> None:
    HealthCheck.objects.bulk_create(
        HealthCheck(endpoint=endpoint, checked_at=at - timedelta(seconds=i), ok=True)
        for i in range(count)
    )


def test_pruning_deletes_old_rows_in_batches_and_keeps_recent_ones(db: None) -> None:
    cluster = Cluster.objects.create(name="p")
    endpoint = Endpoint.objects.create(cluster=cluster, name="e", host="10.0.0.1")
    now = timezone.now()
    add_checks(endpoint, now - timedelta(days=8), 25)
    add_checks(endpoint, now - timedelta(days=6), 5)

    report = prune_health_checks(older_than=timedelta(days=7), batch_size=10)

    assert (report.deleted, report.batches) == (25, 3)
    assert HealthCheck.objects.count() == 5
    assert not HealthCheck.objects.filter(checked_at__lt=now - timedelta(days=7)).exists()
    again = prune_health_checks(older_than=timedelta(days=7), batch_size=10)
    assert (again.deleted, again.batches) == (0, 0)


def test_the_prune_task_runs_on_a_worker_with_the_retention_setting(
    celery_worker: Any, db: None
) -> None:
    cluster = Cluster.objects.create(name="p")
    endpoint = Endpoint.objects.create(cluster=cluster, name="e", host="10.0.0.1")
    now = timezone.now()
    add_checks(endpoint, now - timedelta(days=7, hours=1), 3)  # default retention: 7 days
    add_checks(endpoint, now - timedelta(days=6, hours=23), 2)

    prune_task.delay()

    pruned = poll_until(lambda: HealthCheck.objects.count() <= 2, timeout_s=30, interval_s=0.2)
    assert pruned, "the worker did not prune"
    assert HealthCheck.objects.count() == 2


# Beat and workers together


@pytest.fixture(scope="module")
def threaded_worker(celery_worker: Any) -> Iterator[Any]:
    """A second worker that runs four tasks at once: sweeps could overlap without the lock."""
    hostname = f"pgwarden-test-threads-{os.getpid()}@localhost"
    log_path = ROOT / "var" / f"test-celery-threads-{os.getpid()}.log"
    options = [
        "--pool=threads",
        "--concurrency=4",
        "--loglevel=INFO",
        "--without-mingle",
        "--without-gossip",
        f"--hostname={hostname}",
    ]
    with running_worker(celery_worker, options, log_path, ping_hostname=hostname):
        yield celery_worker


@pytest.fixture
def beat(threaded_worker: Any, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``celery beat`` with the project's schedule, for the length of one test."""
    with running_beat(tmp_path / "celerybeat-schedule", tmp_path / "beat.log") as process:
        yield process


def sweep_times(cluster: Cluster) -> list[datetime]:
    """When each sweep of ``cluster`` recorded its checks (one timestamp per sweep)."""
    return sorted(
        set(
            HealthCheck.objects.filter(endpoint__cluster=cluster).values_list(
                "checked_at", flat=True
            )
        )
    )


def wait_for_sweeps(cluster: Cluster, count: int, timeout_s: float) -> list[datetime]:
    def enough() -> list[datetime]:
        times = sweep_times(cluster)
        return times if len(times) >= count else []

    times = poll_until(enough, timeout_s=timeout_s, interval_s=0.25)
    assert times, f"only {len(sweep_times(cluster))} sweeps in {timeout_s} s"
    return times


def wait_until_idle(cluster: Cluster) -> None:
    """Until no sweep of ``cluster`` holds its lock, so none writes after the test."""
    client = coordination.redis_client()
    key = SWEEP_LOCK_KEY.format(cluster_id=cluster.pk)
    assert poll_until(lambda: not client.exists(key), timeout_s=15, interval_s=0.1)


def gaps_s(times: list[datetime]) -> list[float]:
    return [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(times)]


def test_beat_sweeps_every_cluster_every_second(
    local_cluster: Cluster, beat: subprocess.Popen[bytes]
) -> None:
    try:
        times = wait_for_sweeps(local_cluster, 6, timeout_s=30)
    finally:
        stop_process(beat)
        wait_until_idle(local_cluster)

    gaps = sorted(gaps_s(times)[:5])
    median = gaps[len(gaps) // 2]
    # Beat ticks once a second; a busy 2-core machine may run one a little late.
    assert 0.6 <= median <= 1.6, gaps
    primary = Endpoint.objects.get(cluster=local_cluster, name="primary")
    assert primary.state == "healthy"
    assert primary.last_checked_at is not None


def test_sweeps_of_one_cluster_never_overlap_with_beat_and_several_workers(
    local_cluster: Cluster, silent_port: int, beat: subprocess.Popen[bytes]
) -> None:
    # Each sweep takes one probe timeout (2.5 s) while beat dispatches one a second and
    # four worker threads stand ready: without the lock, sweeps would start a second apart.
    probe_timeout_s = 2.5
    add_hung_endpoint(local_cluster, silent_port, probe_timeout_s=probe_timeout_s)
    try:
        times = wait_for_sweeps(local_cluster, 4, timeout_s=40)
    finally:
        stop_process(beat)
        wait_until_idle(local_cluster)

    times = sweep_times(local_cluster)
    gaps = gaps_s(times)
    # A sweep records its checks after its probes, and the next starts only once it has
    # released the lock: consecutive records are at least one probe timeout apart.
    assert all(gap >= probe_timeout_s - 0.05 for gap in gaps), gaps
    # And a skipped tick is not queued for later: the next free tick sweeps at once.
    assert all(gap < 2 * probe_timeout_s + 2 for gap in gaps), gaps
    hung = Endpoint.objects.get(cluster=local_cluster, name="hung")
    assert hung.state == "down"
