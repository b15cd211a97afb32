"""endpoints.control: the control cycle's decisions against the real cluster.

A sweep observes, records, evaluates alerts and reacts: a primary down for the failure
threshold hands over to failover, a fenced endpoint answering as a writable primary is
made to refuse writes. ``endpoints.failover`` is replaced here by a recording stand-in
(``control.failover``) so that no test promotes or fences the shared cluster's servers.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from endpoints import control, coordination, health
from endpoints import failover as real_failover
from endpoints.control import sweep
from endpoints.core.observations import Observation, ProbeResult
from endpoints.core.vocabulary import Role
from endpoints.devstack.localcluster import LocalPostgresCluster
from endpoints.models import Alert, Cluster, Endpoint, HealthCheck, State
from tests.helpers.registry import add_endpoint

pytestmark = pytest.mark.django_db(transaction=True)


def configure(cluster: Cluster, **fields: Any) -> Cluster:
    Cluster.objects.filter(pk=cluster.pk).update(**fields)
    cluster.refresh_from_db()
    return cluster


class FailoverStandIn:
    """Records the calls the control cycle makes to endpoints.failover."""

    def __init__(self, error: Exception | None = None) -> None:
        self.primary_down: list[str] = []
        self.refused: list[str] = []
        self.error = error

    def on_primary_down(self, cluster: Cluster) -> None:
        self.primary_down.append(cluster.name)
        if self.error:
            raise self.error

    def refuse_writes(self, endpoint: Endpoint) -> None:
        self.refused.append(endpoint.name)
        if self.error:
            raise self.error


@pytest.fixture
def failover(monkeypatch: pytest.MonkeyPatch) -> FailoverStandIn:
    stand_in = FailoverStandIn()
    monkeypatch.setattr(control, "failover", stand_in)
    return stand_in


# Reactions: failover and split brain


def test_a_primary_down_for_the_threshold_hands_over_to_failover_on_every_sweep(
    local_cluster: Cluster, closed_port: int, failover: FailoverStandIn
) -> None:
    configure(local_cluster, failure_threshold=2, auto_failover=True)
    Endpoint.objects.filter(cluster=local_cluster, name="primary").update(port=closed_port)

    sweep(local_cluster)
    assert failover.primary_down == []
    sweep(local_cluster)
    assert failover.primary_down == ["local"]
    sweep(local_cluster)
    assert failover.primary_down == ["local", "local"]
    alert = Alert.objects.get(cluster=local_cluster, key="primary_down")
    assert "automatic failover is starting" in alert.message


def test_without_automatic_failover_a_down_primary_only_alerts(
    local_cluster: Cluster, closed_port: int, failover: FailoverStandIn
) -> None:
    configure(local_cluster, failure_threshold=1, auto_failover=False)
    Endpoint.objects.filter(cluster=local_cluster, name="primary").update(port=closed_port)

    sweep(local_cluster)

    assert failover.primary_down == []
    alert = Alert.objects.get(cluster=local_cluster, key="primary_down")
    assert "manage.py failover local" in alert.message


def test_a_paused_cluster_alerts_but_does_not_fail_over_until_resumed(
    local_cluster: Cluster, closed_port: int, failover: FailoverStandIn
) -> None:
    configure(local_cluster, failure_threshold=1, auto_failover=True)
    paused = real_failover.pause(local_cluster, "kernel upgrade")
    Endpoint.objects.filter(cluster=local_cluster, name="primary").update(port=closed_port)

    sweep(paused)
    sweep(paused)

    assert failover.primary_down == []
    alert = Alert.objects.get(cluster=local_cluster, key="primary_down", cleared_at=None)
    assert "automatic failover is paused since " in alert.message
    assert "(kernel upgrade)" in alert.message
    assert "manage.py failover local --resume" in alert.message

    sweep(real_failover.resume(local_cluster))
    assert failover.primary_down == ["local"]


def test_a_failing_failover_is_logged_and_the_sweep_goes_on(
    local_cluster: Cluster,
    closed_port: int,
    monkeypatch: pytest.MonkeyPatch,
    pgwarden_logs: pytest.LogCaptureFixture,
) -> None:
    configure(local_cluster, failure_threshold=1, auto_failover=True)
    Endpoint.objects.filter(cluster=local_cluster, name="primary").update(port=closed_port)
    stand_in = FailoverStandIn(error=RuntimeError("promotion went wrong"))
    monkeypatch.setattr(control, "failover", stand_in)

    observations = sweep(local_cluster)

    assert len(observations) == 3
    assert HealthCheck.objects.filter(endpoint__cluster=local_cluster).count() == 3
    errors = [r for r in pgwarden_logs.records if r.levelno == logging.ERROR]
    assert any("automatic failover of cluster local failed" in r.message for r in errors)


@pytest.fixture
def read_only_role(pg_cluster: LocalPostgresCluster) -> Iterator[tuple[str, str]]:
    """A login role whose sessions default to read-only: a primary that refused writes."""
    name, password = "fenced_probe", "fenced-probe-password-1"
    with psycopg.connect(**pg_cluster.conninfo("primary"), autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {name}")
        conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
        conn.execute(f"ALTER ROLE {name} SET default_transaction_read_only = on")
    yield name, password
    with psycopg.connect(**pg_cluster.conninfo("primary"), autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {name}")


def test_a_fenced_endpoint_answering_as_a_writable_primary_is_split_brain(
    local_cluster: Cluster,
    pg_cluster: LocalPostgresCluster,
    failover: FailoverStandIn,
    read_only_role: tuple[str, str],
) -> None:
    # An old primary, fenced after a failover, back up and not in recovery.
    old = add_endpoint(local_cluster, "old-primary", pg_cluster.primary.port, state=State.FENCED)

    for _ in range(3):
        observed = {o.endpoint.name: o for o in sweep(local_cluster)}
        assert observed["old-primary"].state == State.FENCED
        assert observed["old-primary"].writable_while_fenced

    # Write refusal is asked for on every sweep until it holds; one alert, no storm.
    assert failover.refused == ["old-primary"] * 3
    [alert] = Alert.objects.filter(cluster=local_cluster, cleared_at__isnull=True)
    assert (alert.key, alert.kind) == (f"split_brain:{old.pk}", Alert.Kind.SPLIT_BRAIN)
    assert alert.severity == Alert.Severity.CRITICAL
    assert "pgwarden makes it refuse writes" in alert.message
    old.refresh_from_db()
    assert old.state == State.FENCED

    # Once it refuses writes (its sessions default to read-only), it is left alone.
    role, password = read_only_role
    old.user = role
    old.set_password(password)
    old.save()
    sweep(local_cluster)
    assert failover.refused == ["old-primary"] * 3
    assert Alert.objects.filter(cluster=local_cluster, cleared_at__isnull=True).count() == 1


def test_split_brain_without_write_refusal_alerts_only(
    local_cluster: Cluster, pg_cluster: LocalPostgresCluster, failover: FailoverStandIn
) -> None:
    configure(local_cluster, fence_writes=False)
    add_endpoint(local_cluster, "old-primary", pg_cluster.primary.port, state=State.FENCED)

    sweep(local_cluster)

    assert failover.refused == []
    alert = Alert.objects.get(cluster=local_cluster, kind=Alert.Kind.SPLIT_BRAIN)
    assert "make it refuse writes or stop it" in alert.message


# The cycle's decisions, pure

_pks = itertools.count(1)


def observation(
    cluster: Cluster,
    name: str,
    role: str,
    result: ProbeResult,
    *,
    state: str = State.HEALTHY,
    failures: int = 0,
) -> Observation:
    endpoint = Endpoint(pk=next(_pks), cluster=cluster, name=name, role=role, state=state)
    return Observation(
        endpoint, result, None, state=state, score=100, consecutive_failures=failures
    )


def test_a_primary_is_down_only_after_the_failure_threshold() -> None:
    cluster = Cluster(name="c", failure_threshold=3, auto_failover=True)
    failed = ProbeResult(ok=False, error="refused")
    replica_down = observation(cluster, "r", Role.REPLICA, failed, failures=5)

    for failures, down in [(2, False), (3, True), (4, True)]:
        primary = observation(cluster, "p", Role.PRIMARY, failed, failures=failures)
        assert control.primary_is_down(cluster, [primary, replica_down]) is down
        assert control.needs_reaction(cluster, [primary, replica_down]) is down
    assert not control.primary_is_down(cluster, [replica_down])
    cluster.auto_failover = False
    primary = observation(cluster, "p", Role.PRIMARY, failed, failures=3)
    assert not control.needs_reaction(cluster, [primary])


def test_only_fenced_writable_primaries_not_yet_read_only_get_writes_refused() -> None:
    cluster = Cluster(name="c", fence_writes=True)
    writable = ProbeResult(ok=True, in_recovery=False, read_only=False)
    fenced = observation(cluster, "old", Role.PRIMARY, writable, state=State.FENCED)
    refused = observation(
        cluster,
        "older",
        Role.PRIMARY,
        ProbeResult(ok=True, in_recovery=False, read_only=True),
        state=State.FENCED,
    )
    healthy = observation(cluster, "primary", Role.PRIMARY, writable)
    fenced_replica = observation(
        cluster, "rep", Role.REPLICA, ProbeResult(ok=True, in_recovery=True), state=State.FENCED
    )
    observations = [fenced, refused, healthy, fenced_replica]

    assert control.endpoints_to_refuse_writes(observations) == [fenced.endpoint]
    assert control.needs_reaction(cluster, observations)
    assert not control.needs_reaction(cluster, [refused, healthy, fenced_replica])
    cluster.fence_writes = False
    assert not control.needs_reaction(cluster, observations)


# Under the sweep lock: the scheduled sweep and "check now"


def test_check_now_observes_records_alerts_and_reacts_under_the_lock(
    local_cluster: Cluster, closed_port: int, failover: FailoverStandIn, redis_server: Any
) -> None:
    configure(local_cluster, failure_threshold=1, auto_failover=True)
    Endpoint.objects.filter(cluster=local_cluster, name="primary").update(port=closed_port)

    report, observations = control.sweep_now(local_cluster.pk)

    assert (report.swept, report.endpoints, report.available) == (True, 3, 2)
    assert len(observations) == 3
    assert HealthCheck.objects.filter(endpoint__cluster=local_cluster).count() == 3
    assert Alert.objects.filter(cluster=local_cluster, key="primary_down").exists()
    assert failover.primary_down == ["local"]
    # Released at the end, reaction included: the next sweep runs.
    assert control.sweep_exclusively(local_cluster.pk).swept


def test_a_sweep_that_finds_the_lock_held_is_skipped_and_changes_nothing(
    local_cluster: Cluster, closed_port: int, failover: FailoverStandIn, redis_server: Any
) -> None:
    configure(local_cluster, failure_threshold=1, auto_failover=True)
    Endpoint.objects.filter(cluster=local_cluster, name="primary").update(port=closed_port)
    lock = health.sweep_lock(local_cluster)
    assert lock.acquire()
    try:
        report, observations = control.sweep_now(local_cluster.pk)
    finally:
        lock.release()

    assert (report.swept, observations) == (False, [])
    assert report.skipped_because == "another sweep of this cluster is running"
    assert not HealthCheck.objects.filter(endpoint__cluster=local_cluster).exists()
    assert failover.primary_down == []


def test_without_redis_no_sweep_runs(
    local_cluster: Cluster, closed_port: int, failover: FailoverStandIn
) -> None:
    unreachable = coordination.redis_client(f"redis://127.0.0.1:{closed_port}/0")

    report = control.sweep_exclusively(local_cluster.pk, client=unreachable)

    assert not report.swept
    assert report.skipped_because.startswith("Redis unreachable: ")
    assert not HealthCheck.objects.filter(endpoint__cluster=local_cluster).exists()
