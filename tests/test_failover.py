"""endpoints.failover: failovers, switchovers and fences of real clusters.

The pure candidate choice is tested in test_candidates.py.

Every test that fails over gets a PostgreSQL cluster of its own (a primary and two
replicas, about 2 s to create): a failover changes which server is primary, so the
session's shared ``pg_cluster`` is never touched here.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
import redis
from django.conf import settings
from django.db import connection

from endpoints import failover, health, routing
from endpoints.core.waiting import poll_until
from endpoints.devstack.localcluster import LocalPostgresCluster, LocalRedis, parse_lsn
from endpoints.failover import (
    FailoverInProgress,
    NotReadmittable,
    PrimaryUnavailable,
    UnknownEndpoint,
)
from endpoints.models import Alert, Cluster, Endpoint, FailoverEvent, Role, State
from tests.helpers import ROOT
from tests.helpers.processes import run_manage

# Real clusters

failover_db = pytest.mark.django_db(transaction=True)


def sql(local: LocalPostgresCluster, node: str, query: Any, params: Any = None) -> list[Any]:
    with psycopg.connect(**local.conninfo(node), autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    if not poll_until(check, timeout_s=timeout_s):
        pytest.fail(f"not within {timeout_s} s: {what}")


def endpoint(cluster: Cluster, name: str) -> Endpoint:
    return Endpoint.objects.select_related("cluster").get(cluster=cluster, name=name)


def step_names(event: FailoverEvent) -> list[str]:
    return [step["step"] for step in event.steps]


def record_streams(
    cluster: Cluster, names: tuple[str, ...] = ("replica1", "replica2"), timeout_s: float = 10.0
) -> None:
    """Sweep (record only, no reaction) until the enabled ``names`` are recorded streaming.

    In production beat sweeps every second, so when the primary dies the registry holds
    the last observation made while it was alive; a test that kills the primary right
    after creating the cluster must make one first, or nothing may be promoted.
    """
    primary = Endpoint.objects.get(cluster=cluster, role=Role.PRIMARY, enabled=True)

    def all_recorded() -> bool:
        health.probe_and_record(Cluster.objects.get(pk=cluster.pk))
        replicas = Endpoint.objects.filter(cluster=cluster, name__in=names, enabled=True)
        return not replicas.exclude(upstream=primary).exists()

    wait_until(all_recorded, timeout_s, "sweeps record every replica streaming from the primary")


@failover_db
def test_kill_9_of_the_primary_promotes_a_replica_that_the_other_follows(
    fresh: tuple[LocalPostgresCluster, Cluster],
) -> None:
    local, cluster = fresh
    assert routing.execute(cluster.name, "INSERT INTO t (note) VALUES ('before')").role == "primary"

    record_streams(cluster)  # as beat's sweeps every second do
    local.kill_node("primary")
    event = failover.on_primary_down(cluster)

    assert event is not None
    assert event.outcome == FailoverEvent.Outcome.SUCCEEDED, (event.reason, event.steps)
    assert event.kind == FailoverEvent.Kind.AUTOMATIC
    assert event.old_primary_name == "primary"
    new = event.new_primary_name
    other = ({"replica1", "replica2"} - {new}).pop()
    assert new in {"replica1", "replica2"}
    assert step_names(event) == [
        "plan",
        "promote",
        "verify promotion",
        "registry",
        f"re-point {other}",
        f"verify {other} streams",
    ]
    assert all(step["ok"] and step["at"] and step["detail"] for step in event.steps)
    assert event.finished_at is not None
    assert "failed probes" in event.reason
    # The primary is gone: what the last sweep recorded shows the candidate streamed from it.
    assert "recorded streaming from primary" in event.steps[0]["detail"]

    old = endpoint(cluster, "primary")
    assert (old.role, old.state, old.enabled) == (Role.REPLICA, State.FENCED, True)
    assert f"rebuild it as a replica of {new}" in old.fenced_reason
    assert endpoint(cluster, new).role == Role.PRIMARY
    assert endpoint(cluster, new).upstream is None
    assert Endpoint.objects.filter(cluster=cluster, role=Role.PRIMARY).count() == 1

    written = routing.execute(cluster.name, "INSERT INTO t (note) VALUES ('after') RETURNING id")
    assert (written.endpoint, written.role) == (new, "primary")
    wait_until(
        lambda: sql(local, other, "SELECT count(*) FROM t WHERE note = 'after'") == [(1,)],
        10,
        f"the row written on {new} replicated to {other}",
    )
    assert sql(local, new, "SELECT pg_is_in_recovery()") == [(False,)]
    messages = list(
        Alert.objects.filter(cluster=cluster, kind=Alert.Kind.FAILOVER).values_list(
            "message", flat=True
        )
    )
    assert any("started" in m for m in messages)
    assert any("succeeded" in m and f"primary -> {new}" in m for m in messages)
    passwords = json.loads((local.base_dir / "cluster.json").read_text())
    audit = f"{event.reason} {event.steps} {messages}"
    assert passwords["password"] not in audit
    assert passwords["replication_password"] not in audit


@failover_db
def test_a_returning_old_primary_refuses_writes_then_is_rebuilt_and_readmitted(
    fresh: tuple[LocalPostgresCluster, Cluster],
) -> None:
    local, cluster = fresh
    record_streams(cluster)  # as beat's sweeps every second do
    local.kill_node("primary")
    event = failover.fail_over(cluster, kind=FailoverEvent.Kind.AUTOMATIC, reason="test: killed")
    assert event.outcome == FailoverEvent.Outcome.SUCCEEDED, (event.reason, event.steps)
    new = event.new_primary_name

    # It comes back as it was: a writable primary, on its own timeline (split brain).
    local.start_node("primary")
    with psycopg.connect(**local.conninfo("primary"), autocommit=True) as stale_session:
        stale_session.execute("INSERT INTO t (note) VALUES ('split brain')")
        assert (
            routing.execute(cluster.name, "INSERT INTO t (note) VALUES ('routed')").endpoint == new
        )
        old = endpoint(cluster, "primary")
        with pytest.raises(NotReadmittable, match="not in recovery"):
            failover.readmit(old)

        ended = failover.refuse_writes(old)

        assert ended >= 1  # stale_session, at least
        with pytest.raises(psycopg.OperationalError):
            stale_session.execute("SELECT 1")
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction) as refused:
        sql(local, "primary", "INSERT INTO t (note) VALUES ('refused')")
    assert refused.value.sqlstate == "25006"
    assert endpoint(cluster, "primary").state == State.FENCED

    rebuilt = run_manage(
        "local_cluster",
        "rebuild",
        "primary",
        "--dir",
        str(local.base_dir),
        "--cluster",
        cluster.name,
        timeout=120,
    )
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert f"Rebuilding primary as a replica of {new}" in rebuilt.stdout
    assert "Re-admitted" in rebuilt.stdout

    readmitted = endpoint(cluster, "primary")
    assert (readmitted.state, readmitted.role, readmitted.fenced_reason) == (
        State.UNKNOWN,
        Role.REPLICA,
        "",
    )
    assert sql(local, "primary", "SELECT pg_is_in_recovery()") == [(True,)]
    assert sql(local, "primary", "SELECT count(*) FROM t WHERE note = 'split brain'") == [(0,)]
    sql(local, new, "INSERT INTO t (note) VALUES ('after rebuild')")
    wait_until(
        lambda: (
            sql(local, "primary", "SELECT count(*) FROM t WHERE note = 'after rebuild'") == [(1,)]
        ),
        10,
        "the rebuilt node replays the new primary's writes",
    )

    # The local cluster now knows its primary: a full restart brings back the same roles.
    again = LocalPostgresCluster(local.base_dir, replicas=2)
    assert again.primary.name == new
    again.stop()
    again.start()
    roles = {status.node.name: status.in_recovery for status in again.status()}
    assert roles == {new: False, "primary": True, ({"replica1", "replica2"} - {new}).pop(): True}


@failover_db
def test_a_replica_lagging_beyond_the_bound_is_not_promoted(
    fresh: tuple[LocalPostgresCluster, Cluster],
) -> None:
    local, cluster = fresh
    Endpoint.objects.filter(cluster=cluster, name="replica2").update(enabled=False)
    sql(local, "replica1", "SELECT pg_wal_replay_pause()")
    sql(
        local,
        "primary",
        "INSERT INTO t (note) SELECT repeat('x', 1000) FROM generate_series(1, 3000)",
    )
    (primary_lsn,) = sql(local, "primary", "SELECT pg_current_wal_lsn()::text")[0]
    wait_until(
        lambda: (
            parse_lsn(sql(local, "replica1", "SELECT pg_last_wal_receive_lsn()::text")[0][0])
            >= parse_lsn(primary_lsn)
        ),
        10,
        "replica1 received the primary's WAL (replay paused)",
    )
    record_streams(cluster)  # as beat's sweeps every second do
    local.kill_node("primary")

    event = failover.on_primary_down(cluster)

    assert event is not None
    assert event.outcome == FailoverEvent.Outcome.ABORTED
    assert "nothing promoted" in event.reason
    assert "replica1: " in event.reason
    assert "over the cluster's max failover lag" in event.reason
    assert "replica2: disabled" in event.reason
    assert step_names(event) == ["plan"]
    assert event.steps[0]["ok"] is False
    assert sql(local, "replica1", "SELECT pg_is_in_recovery()") == [(True,)]
    assert endpoint(cluster, "primary").role == Role.PRIMARY
    assert endpoint(cluster, "replica1").role == Role.REPLICA
    assert Alert.objects.filter(
        cluster=cluster,
        kind=Alert.Kind.FAILOVER,
        severity=Alert.Severity.CRITICAL,
        message__contains="aborted",
    ).exists()
    # The sweep calls again every second while the primary stays down: no storm of
    # aborted events and alerts, only a retry after ABORTED_RETRY_S.
    alerts_before = Alert.objects.filter(cluster=cluster).count()
    assert failover.on_primary_down(cluster) is None
    assert FailoverEvent.objects.filter(cluster=cluster).count() == 1
    assert Alert.objects.filter(cluster=cluster).count() == alerts_before


@failover_db
def test_two_workers_racing_to_fail_over_fail_over_once(
    fresh: tuple[LocalPostgresCluster, Cluster],
) -> None:
    local, cluster = fresh
    record_streams(cluster)  # as beat's sweeps every second do
    local.kill_node("primary")
    start = threading.Barrier(2)
    results: list[FailoverEvent | BaseException | None] = []

    def worker() -> None:
        try:
            start.wait()
            results.append(failover.on_primary_down(Cluster.objects.get(pk=cluster.pk)))
        except BaseException as exc:  # reported below, not lost in the thread
            results.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    events = [r for r in results if isinstance(r, FailoverEvent)]
    assert len(results) == 2
    assert results.count(None) == 1, results
    assert len(events) == 1
    assert events[0].outcome == FailoverEvent.Outcome.SUCCEEDED
    assert FailoverEvent.objects.filter(cluster=cluster).count() == 1
    assert Endpoint.objects.filter(cluster=cluster, role=Role.PRIMARY).count() == 1


@failover_db
def test_two_processes_racing_to_fail_over_fail_over_once(
    fresh: tuple[LocalPostgresCluster, Cluster],
) -> None:
    """As two Celery workers on two machines would: separate processes, one Redis lock."""
    local, cluster = fresh
    record_streams(cluster)  # as beat's sweeps every second do
    local.kill_node("primary")
    script = (
        "from endpoints import failover\n"
        "from endpoints.models import Cluster\n"
        f"event = failover.on_primary_down(Cluster.objects.get(pk={cluster.pk}))\n"
        "print('RESULT', event.outcome if event else 'none')\n"
    )
    racers = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "shell", "-c", script],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [racer.communicate(timeout=120) for racer in racers]
    results = sorted(
        line.split()[1]
        for stdout, _ in outputs
        for line in stdout.splitlines()
        if line.startswith("RESULT ")
    )
    assert results == ["none", "succeeded"], outputs
    assert FailoverEvent.objects.filter(cluster=cluster).count() == 1
    assert Endpoint.objects.filter(cluster=cluster, role=Role.PRIMARY).count() == 1


@failover_db
def test_a_held_lock_means_a_failover_is_in_progress(redis_server: LocalRedis) -> None:
    cluster = Cluster.objects.create(name=f"locked-{uuid.uuid4().hex[:6]}")
    Endpoint.objects.create(cluster=cluster, name="p", host="127.0.0.1", port=9, role=Role.PRIMARY)
    held = redis.Redis.from_url(settings.REDIS_URL).lock(failover.lock_key(cluster.pk), timeout=30)
    assert held.acquire(blocking=False)
    try:
        with pytest.raises(FailoverInProgress, match="already running"):
            failover.fail_over(cluster, reason="test")
        with pytest.raises(FailoverInProgress):
            failover.switchover(cluster)
        assert failover.on_primary_down(cluster) is None
    finally:
        held.release()
    assert not FailoverEvent.objects.filter(cluster=cluster).exists()


@failover_db
def test_bad_targets_and_a_dead_primary_are_refused_before_anything_happens(
    redis_server: LocalRedis, closed_port: int
) -> None:
    cluster = Cluster.objects.create(name=f"dead-{uuid.uuid4().hex[:6]}")
    for name, role in (("p", Role.PRIMARY), ("r", Role.REPLICA)):
        Endpoint.objects.create(
            cluster=cluster, name=name, host="127.0.0.1", port=closed_port, role=role
        )
    with pytest.raises(UnknownEndpoint, match="has no endpoint 'nope' \\(it has: p, r\\)"):
        failover.fail_over(cluster, to="nope", reason="test")
    with pytest.raises(UnknownEndpoint, match="already the primary"):
        failover.plan_failover(cluster, to="p")
    with pytest.raises(PrimaryUnavailable, match="use failover instead"):
        failover.switchover(cluster)
    assert not FailoverEvent.objects.filter(cluster=cluster).exists()
    # Nothing answers: a failover is recorded as aborted, and nothing changes.
    event = failover.fail_over(cluster, reason="test")
    assert event.outcome == FailoverEvent.Outcome.ABORTED
    assert "r: did not answer" in event.reason
    assert endpoint(cluster, "p").role == Role.PRIMARY


@failover_db
def test_switchover_under_a_steady_stream_of_writes_loses_no_committed_row(
    fresh: tuple[LocalPostgresCluster, Cluster],
) -> None:
    local, cluster = fresh
    committed: list[int] = []
    landed_on: set[str] = set()
    failures: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        try:
            for n in itertools.count():
                if stop.is_set():
                    return
                try:
                    result = routing.execute(
                        cluster.name, "INSERT INTO t (note) VALUES (%s)", [f"w{n}"]
                    )
                except routing.RoutingError as exc:
                    failures.append(type(exc).__name__)
                    time.sleep(0.005)
                else:
                    committed.append(n)
                    landed_on.add(result.endpoint)
        finally:
            connection.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        wait_until(lambda: len(committed) >= 100, 20, "writes flow before the switchover")
        event = failover.switchover(cluster, to="replica2", timeout_s=10)
        assert event.outcome == FailoverEvent.Outcome.SUCCEEDED, (event.reason, event.steps)
        before = len(committed)
        wait_until(lambda: len(committed) >= before + 100, 20, "writes flow after the switchover")
    finally:
        stop.set()
        thread.join(30)

    assert event.kind == FailoverEvent.Kind.SWITCHOVER
    assert step_names(event) == [
        "plan",
        "stop writes on the old primary",
        "final position",
        "catch up",
        "promote",
        "verify promotion",
        "registry",
        "re-point replica1",
        "verify replica1 streams",
    ]
    assert landed_on == {"primary", "replica2"}
    rows = {note for (note,) in sql(local, "replica2", "SELECT note FROM t")}
    missing = [n for n in committed if f"w{n}" not in rows]
    assert missing == [], f"{len(missing)} acknowledged writes missing; failures: {failures[:5]}"
    wait_until(
        lambda: (
            sql(local, "replica1", "SELECT count(*) FROM t")
            == sql(local, "replica2", "SELECT count(*) FROM t")
        ),
        10,
        "replica1 follows the new primary",
    )
    # The old primary stays up, read-only and fenced until it is rebuilt.
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        sql(local, "primary", "INSERT INTO t (note) VALUES ('late')")
    assert endpoint(cluster, "primary").state == State.FENCED


@failover_db
def test_a_switchover_whose_candidate_cannot_catch_up_is_undone(
    fresh: tuple[LocalPostgresCluster, Cluster],
) -> None:
    local, cluster = fresh
    sql(local, "replica1", "SELECT pg_wal_replay_pause()")
    sql(local, "primary", "INSERT INTO t (note) VALUES ('not replayed on replica1')")

    event = failover.switchover(cluster, to="replica1", timeout_s=1)

    assert event.outcome == FailoverEvent.Outcome.ABORTED
    assert "replica1 replayed" in event.reason
    assert "writable again" in event.reason
    assert step_names(event)[-2:] == ["catch up", "undo read-only"]
    sql(local, "primary", "INSERT INTO t (note) VALUES ('writable again')")
    assert sql(local, "replica1", "SELECT pg_is_in_recovery()") == [(True,)]
    assert endpoint(cluster, "primary").role == Role.PRIMARY
    assert endpoint(cluster, "primary").state != State.FENCED


@failover_db
def test_a_manual_failover_of_a_live_primary_makes_it_read_only_first(
    fresh: tuple[LocalPostgresCluster, Cluster],
) -> None:
    local, cluster = fresh
    plan = failover.plan_failover(cluster, to="replica1")
    assert (plan.candidate, plan.primary, plan.primary_answers) == ("replica1", "primary", True)

    event = failover.fail_over(cluster, to="replica1", reason="test: manual")

    assert event.outcome == FailoverEvent.Outcome.SUCCEEDED, (event.reason, event.steps)
    assert step_names(event)[:3] == ["plan", "fence old primary", "promote"]
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        sql(local, "primary", "INSERT INTO t (note) VALUES ('late')")
    sql(local, "replica1", "INSERT INTO t (note) VALUES ('new primary')")
    wait_until(
        lambda: sql(local, "replica2", "SELECT count(*) FROM t") == [(1,)],
        10,
        "replica2 follows replica1",
    )


@pytest.mark.processes
def test_failover_help_documents_every_option() -> None:
    result = run_manage("failover", "--help")
    assert result.returncode == 0, result.stderr
    for text in (
        "CLUSTER",
        "--to ENDPOINT",
        "--switchover",
        "--yes",
        "--dry-run",
        "--timeout",
        "no data loss",
        "not a terminal",
        "examples:",
    ):
        assert text in result.stdout, text


@failover_db
def test_the_command_prints_the_plan_refuses_without_yes_then_switches_over(
    fresh: tuple[LocalPostgresCluster, Cluster],
) -> None:
    _local, cluster = fresh
    dry = run_manage("failover", cluster.name, "--switchover", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "candidate: replica" in dry.stdout
    assert "refuses new writes" in dry.stdout
    assert "Dry run: nothing changed." in dry.stdout

    refused = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "failover", cluster.name, "--switchover"],
        cwd=ROOT,
        env=dict(os.environ),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 1
    assert "stdin is not a terminal" in refused.stderr
    assert "--yes" in refused.stderr
    assert not FailoverEvent.objects.filter(cluster=cluster).exists()

    done = run_manage("failover", cluster.name, "--switchover", "--to", "replica1", "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok    catch up" in done.stdout
    assert "Switchover #" in done.stdout
    assert "succeeded: primary -> replica1" in done.stdout
    assert endpoint(cluster, "replica1").role == Role.PRIMARY

    nothing = run_manage("failover", cluster.name, "--to", "primary", "--dry-run")
    assert nothing.returncode == 1
    assert "primary was requested but cannot be promoted: fenced" in nothing.stdout + nothing.stderr


@failover_db
def test_kill_9_of_the_primary_fails_over_on_beat_and_a_worker_with_default_settings(
    fresh: tuple[LocalPostgresCluster, Cluster], celery_beat: Any
) -> None:
    """The whole production path: beat ticks, the worker sweeps, detects and promotes."""
    from endpoints.models import HealthCheck
    from endpoints.routing import RoutingError

    local, cluster = fresh
    assert routing.execute(cluster.name, "INSERT INTO t (note) VALUES ('before')").rowcount == 1
    wait_until(
        lambda: HealthCheck.objects.filter(endpoint__cluster=cluster, ok=True).count() >= 6,
        30,
        "beat and the worker sweep the cluster",
    )
    killed_at = time.monotonic()
    local.kill_node("primary")
    new_primary = ""
    while not new_primary:
        assert time.monotonic() - killed_at < 60, "no routed write succeeded after the kill"
        try:
            result = routing.execute(
                cluster.name, "INSERT INTO t (note) VALUES ('after') RETURNING id"
            )
        except RoutingError:
            time.sleep(0.1)
            continue
        new_primary = result.endpoint
    assert new_primary in ("replica1", "replica2")
    [event] = FailoverEvent.objects.filter(cluster=cluster)
    # Writes reach the new primary as soon as the registry names it, while the worker may
    # still be re-pointing the other replica: the event finishes a little later.
    wait_until(
        lambda: FailoverEvent.objects.get(pk=event.pk).outcome != FailoverEvent.Outcome.IN_PROGRESS,
        40,
        "the failover event finishes",
    )
    event.refresh_from_db()
    assert event.kind == FailoverEvent.Kind.AUTOMATIC
    assert event.outcome == FailoverEvent.Outcome.SUCCEEDED
    assert event.new_primary_name == new_primary
    assert endpoint(cluster, "primary").state == State.FENCED
    follower = "replica2" if new_primary == "replica1" else "replica1"
    wait_until(
        lambda: sql(local, follower, "SELECT count(*) FROM t WHERE note = 'after'") == [(1,)],
        30,
        f"{follower} replays the first write on the new primary",
    )

    # The old primary comes back as a writable primary: it stays fenced, the sweep raises
    # a split-brain alert and makes it refuse writes, and no routed request reaches it.
    local.start_node("primary")
    wait_until(
        lambda: Alert.objects.filter(
            cluster=cluster, kind=Alert.Kind.SPLIT_BRAIN, cleared_at__isnull=True
        ).exists(),
        30,
        "a split-brain alert for the returning old primary",
    )
    wait_until(
        lambda: sql(local, "primary", "SHOW default_transaction_read_only") == [("on",)],
        30,
        "the old primary refuses writes",
    )
    assert endpoint(cluster, "primary").state == State.FENCED
    served = {routing.execute(cluster.name, "SELECT 1").endpoint for _ in range(20)}
    assert "primary" not in served
