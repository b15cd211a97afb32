"""endpoints.health: a sweep against the real cluster records lag, recovery and failures."""

from __future__ import annotations

import time

import psycopg
import pytest

from endpoints.health import next_state, replication_lag_bytes, sweep
from endpoints.localcluster import LocalPostgresCluster
from endpoints.models import Cluster, Endpoint, HealthCheck, State
from endpoints.probe import ProbeResult

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_sweep_records_recovery_latency_and_zero_lag_when_caught_up(
    local_cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    pg_cluster.wait_for_replay()
    observations = {o.endpoint.name: o for o in sweep(local_cluster)}
    assert observations["primary"].result.in_recovery is False
    assert observations["primary"].result.wal_lsn is not None
    assert observations["replica1"].result.in_recovery is True
    primary = Endpoint.objects.get(cluster=local_cluster, name="primary")
    replica = Endpoint.objects.get(cluster=local_cluster, name="replica1")
    assert primary.state == State.HEALTHY
    assert primary.in_recovery is False
    assert primary.replication_lag_s is None
    assert replica.in_recovery is True
    assert replica.last_latency_ms is not None
    assert replica.last_latency_ms > 0
    assert replica.replication_lag_s == 0.0  # an idle primary: nothing to replay
    assert HealthCheck.objects.filter(endpoint__cluster=local_cluster).count() == 3


def test_paused_replay_shows_as_lag_in_seconds_and_bytes(
    local_cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    with psycopg.connect(**pg_cluster.conninfo("primary"), autocommit=True) as primary:
        primary.execute("CREATE TABLE IF NOT EXISTS health_t (v int)")  # a replayed commit
    pg_cluster.wait_for_replay()
    with psycopg.connect(**pg_cluster.conninfo("replica2"), autocommit=True) as replica:
        replica.execute("SELECT pg_wal_replay_pause()")
        try:
            with psycopg.connect(**pg_cluster.conninfo("primary"), autocommit=True) as primary:
                primary.execute("INSERT INTO health_t SELECT generate_series(1, 1000)")
            time.sleep(1.2)
            observed = {o.endpoint.name: o for o in sweep(local_cluster)}
            lagging = observed["replica2"]
            assert lagging.result.replay_lag_s is not None
            assert lagging.result.replay_lag_s > 1.0
            assert lagging.lag_bytes is not None
            assert lagging.lag_bytes > 0
        finally:
            replica.execute("SELECT pg_wal_replay_resume()")
    pg_cluster.wait_for_replay()


def test_an_unreachable_endpoint_goes_down_after_the_failure_threshold(
    local_cluster: Cluster, closed_port: int
) -> None:
    Cluster.objects.filter(pk=local_cluster.pk).update(failure_threshold=2)
    local_cluster.refresh_from_db()
    Endpoint.objects.filter(cluster=local_cluster, name="replica1").update(port=closed_port)
    sweep(local_cluster)
    replica = Endpoint.objects.get(cluster=local_cluster, name="replica1")
    assert replica.consecutive_failures == 1
    assert replica.state != State.DOWN
    assert "refused" in replica.last_error or "failed" in replica.last_error
    sweep(local_cluster)
    replica.refresh_from_db()
    assert replica.state == State.DOWN


def test_state_rules_keep_fenced_endpoints_fenced() -> None:
    assert next_state("fenced", ok=True, consecutive_failures=0, threshold=3) == "fenced"
    assert next_state("down", ok=True, consecutive_failures=0, threshold=3) == "healthy"
    assert next_state("healthy", ok=False, consecutive_failures=2, threshold=3) == "healthy"
    assert next_state("healthy", ok=False, consecutive_failures=3, threshold=3) == "down"


def test_lag_bytes_is_measured_against_the_primary_and_never_negative() -> None:
    replica = ProbeResult(ok=True, in_recovery=True, wal_lsn=1000)
    assert replication_lag_bytes(1500, replica) == 500
    assert replication_lag_bytes(900, replica) == 0
    assert replication_lag_bytes(None, replica) is None
    assert replication_lag_bytes(1500, ProbeResult(ok=False)) is None
