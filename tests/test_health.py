"""endpoints.health: sweeps against the real cluster record lag, recovery, failures and roles.

A hung endpoint is a real TCP listener that never answers (``silent_port``). Sweeps run
through the control cycle (:func:`endpoints.control.sweep`), as in production; its
reactions (failover, write refusal) are tested in ``test_control.py``.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from endpoints import routing
from endpoints.control import sweep
from endpoints.core.observations import ProbeResult, WalSender
from endpoints.devstack.localcluster import LocalPostgresCluster
from endpoints.health import (
    Observation,
    answering_primary,
    is_suspect,
    next_state,
    observe,
    probe,
    probe_order,
    replication_lag_bytes,
    routing_relevant_change,
    streams_seen,
    sweep_was_starved,
)
from endpoints.health.upstream import NO_CLIENT_ADDRESS, Resolution
from endpoints.models import Alert, Cluster, Endpoint, HealthCheck, Role, State
from endpoints.routing import topology
from tests.helpers.registry import add_endpoint

pytestmark = pytest.mark.django_db(transaction=True)

# Generous: CI machines have 2 cores and may be busy.
MARGIN_S = 1.0


def configure(cluster: Cluster, **fields: Any) -> Cluster:
    Cluster.objects.filter(pk=cluster.pk).update(**fields)
    cluster.refresh_from_db()
    return cluster


def timed_sweep(cluster: Cluster) -> tuple[dict[str, Observation], float]:
    started = time.monotonic()
    observations = sweep(cluster)
    return {o.endpoint.name: o for o in observations}, time.monotonic() - started


# What a sweep records


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
    assert primary.wal_lsn == observations["primary"].result.wal_lsn
    assert replica.in_recovery is True
    assert replica.last_latency_ms is not None
    assert replica.last_latency_ms > 0
    assert replica.replication_lag_s == 0.0  # an idle primary: nothing to replay
    assert replica.replication_lag_bytes is not None  # bytes behind: racy on a live primary
    assert replica.wal_lsn is not None
    assert not primary.role_mismatch
    assert not replica.role_mismatch
    assert primary.health_score is not None
    assert primary.health_score >= 90
    checks = HealthCheck.objects.filter(endpoint__cluster=local_cluster)
    assert checks.count() == 3
    assert all(check.score is not None and check.score >= 90 for check in checks)


def test_a_sweep_records_which_replicas_stream_from_the_primary_seen_from_its_side(
    local_cluster: Cluster,
    pg_cluster: LocalPostgresCluster,
    pgwarden_logs: pytest.LogCaptureFixture,
) -> None:
    pg_cluster.wait_for_replay()
    # The same server as replica2, under a name the primary's walsender does not carry.
    add_endpoint(local_cluster, "rogue", pg_cluster.node("replica2").port)
    before = timezone.now()

    sweep(local_cluster)

    recorded = {e.name: e for e in Endpoint.objects.filter(cluster=local_cluster)}
    primary = recorded["primary"]
    assert recorded["replica1"].upstream_id == primary.pk
    assert recorded["replica2"].upstream_id == primary.pk
    assert recorded["rogue"].upstream_id is None
    observed_at = {
        recorded[name].upstream_observed_at for name in ("replica1", "replica2", "rogue")
    }
    assert len(observed_at) == 1
    [at] = observed_at
    assert at is not None
    assert at >= before
    # The primary itself streams from nothing: left alone.
    assert (primary.upstream_id, primary.upstream_observed_at) == (None, None)
    assert (
        "replica rogue is not seen streaming from primary primary (no walsender named rogue "
        "on the primary (it has: replica1, replica2)); failover will not promote it"
    ) in pgwarden_logs.text
    assert "replica replica1 is not seen" not in pgwarden_logs.text


def test_recording_upstream_adds_no_query_to_a_sweep(
    local_cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    pg_cluster.wait_for_replay()
    add_endpoint(local_cluster, "rogue", pg_cluster.node("replica2").port)

    with CaptureQueriesContext(connection) as queries:
        sweep(local_cluster)

    endpoint_updates = [
        q["sql"]
        for q in queries.captured_queries
        if q["sql"].startswith('UPDATE "endpoints_endpoint"')
    ]
    # One update per probed endpoint, as before upstream was recorded; it carries upstream.
    assert len(endpoint_updates) == 4
    assert sum('"upstream_id"' in statement for statement in endpoint_updates) == 3
    assert Endpoint.objects.filter(cluster=local_cluster, upstream__isnull=False).count() == 2


@pytest.mark.parametrize("registered_primary_at", ["closed port", "a replica"])
def test_while_the_primary_does_not_answer_as_a_primary_upstream_stays_as_recorded(
    local_cluster: Cluster,
    pg_cluster: LocalPostgresCluster,
    closed_port: int,
    registered_primary_at: str,
) -> None:
    pg_cluster.wait_for_replay()
    sweep(local_cluster)
    recorded = {
        e.name: (e.upstream_id, e.upstream_observed_at)
        for e in Endpoint.objects.filter(cluster=local_cluster, role=Role.REPLICA)
    }
    assert all(upstream is not None for upstream, _ in recorded.values())
    port = (
        closed_port if registered_primary_at == "closed port" else pg_cluster.node("replica1").port
    )
    Endpoint.objects.filter(cluster=local_cluster, role=Role.PRIMARY).update(port=port)

    observations = {o.endpoint.name: o for o in sweep(local_cluster)}

    primary_result = observations["primary"].result
    assert (not primary_result.ok) or primary_result.in_recovery
    assert {
        e.name: (e.upstream_id, e.upstream_observed_at)
        for e in Endpoint.objects.filter(cluster=local_cluster, role=Role.REPLICA)
    } == recorded


def test_replicas_a_sweep_had_no_time_to_probe_still_get_their_upstream_recorded(
    local_cluster: Cluster,
    pg_cluster: LocalPostgresCluster,
    silent_port: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One set-up at a time: the primary goes first, then hung (never probed) holds the
    # turn for the rest of the sweep, so the replicas are not probed at all.
    monkeypatch.setattr(probe, "MAX_CONCURRENT_SETUPS", 1)
    monkeypatch.setattr(probe, "SETUP_TURN_S", 10.0)
    configure(local_cluster, probe_timeout_s=1.0)
    pg_cluster.wait_for_replay()
    Endpoint.objects.filter(cluster=local_cluster, role=Role.REPLICA).update(
        last_checked_at=timezone.now()
    )
    add_endpoint(local_cluster, "hung", silent_port)

    observations = {o.endpoint.name: o for o in sweep(local_cluster)}

    assert "replica1" not in observations
    assert "replica2" not in observations
    assert observations["primary"].result.ok
    recorded = {e.name: e for e in Endpoint.objects.filter(cluster=local_cluster)}
    assert recorded["replica1"].upstream_id == recorded["primary"].pk
    assert recorded["replica2"].upstream_id == recorded["primary"].pk
    assert recorded["hung"].upstream_id is None
    assert recorded["hung"].upstream_observed_at == recorded["replica1"].upstream_observed_at
    assert not HealthCheck.objects.filter(endpoint=recorded["replica1"]).exists()


def test_paused_replay_shows_as_lag_and_over_the_bound_degrades_the_replica(
    local_cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    configure(local_cluster, max_replica_lag_s=1.0)
    with psycopg.connect(**pg_cluster.conninfo("primary"), autocommit=True) as primary:
        primary.execute("CREATE TABLE IF NOT EXISTS health_t (v int)")  # a replayed commit
    pg_cluster.wait_for_replay()
    with psycopg.connect(**pg_cluster.conninfo("replica2"), autocommit=True) as replica:
        replica.execute("SELECT pg_wal_replay_pause()")
        try:
            with psycopg.connect(**pg_cluster.conninfo("primary"), autocommit=True) as primary:
                primary.execute("INSERT INTO health_t SELECT generate_series(1, 1000)")
            time.sleep(1.5)
            observed = {o.endpoint.name: o for o in sweep(local_cluster)}
            lagging = observed["replica2"]
            assert lagging.result.replay_lag_s is not None
            assert lagging.result.replay_lag_s > 1.0
            assert lagging.lag_bytes is not None
            assert lagging.lag_bytes > 0
            assert lagging.state == State.DEGRADED
            assert lagging.score <= 60
            assert observed["replica1"].state == State.HEALTHY
            stored = Endpoint.objects.get(pk=lagging.endpoint.pk)
            assert (stored.state, stored.health_score) == (State.DEGRADED, lagging.score)
            alert = Alert.objects.get(cluster=local_cluster, cleared_at__isnull=True)
            assert alert.key == f"replica_lag:{stored.pk}"
            assert "replica2 lags" in alert.message
        finally:
            replica.execute("SELECT pg_wal_replay_resume()")
    pg_cluster.wait_for_replay()
    observed = {o.endpoint.name: o for o in sweep(local_cluster)}
    assert observed["replica2"].state == State.HEALTHY
    assert not Alert.objects.filter(cluster=local_cluster, cleared_at__isnull=True).exists()


def test_a_probe_slower_than_the_degraded_latency_degrades_the_endpoint(
    local_cluster: Cluster,
) -> None:
    configure(local_cluster, degraded_latency_ms=0.001)

    observations = sweep(local_cluster)

    assert {o.state for o in observations} == {State.DEGRADED}
    assert {o.score for o in observations} == {70}


# Failures and hung endpoints


def test_an_unreachable_endpoint_goes_down_after_the_failure_threshold(
    local_cluster: Cluster, closed_port: int
) -> None:
    configure(local_cluster, failure_threshold=2)
    Endpoint.objects.filter(cluster=local_cluster, name="replica1").update(port=closed_port)
    sweep(local_cluster)
    replica = Endpoint.objects.get(cluster=local_cluster, name="replica1")
    assert replica.consecutive_failures == 1
    assert replica.state != State.DOWN
    assert replica.health_score == 0
    assert "refused" in replica.last_error or "failed" in replica.last_error
    sweep(local_cluster)
    replica.refresh_from_db()
    assert replica.state == State.DOWN


def test_a_hung_endpoint_costs_one_probe_timeout_and_goes_down_while_the_others_answer(
    local_cluster: Cluster, silent_port: int
) -> None:
    configure(local_cluster, probe_timeout_s=1.0, failure_threshold=2, connect_timeout_s=10)
    hung = add_endpoint(local_cluster, "hung", silent_port)

    for sweep_number in (1, 2):
        observed, elapsed = timed_sweep(local_cluster)

        # The probe timeout bounds it, not the (longer) connect timeout, and the hung
        # endpoint is probed beside the others, not before or after them.
        assert 1.0 <= elapsed < 1.0 + MARGIN_S, elapsed
        assert set(observed) == {"primary", "replica1", "replica2", "hung"}
        assert not observed["hung"].result.ok
        assert f"no answer from 127.0.0.1:{silent_port} within 1 s" in observed["hung"].result.error
        for name in ("primary", "replica1", "replica2"):
            assert observed[name].result.ok, observed[name].result.error
            assert observed[name].state == State.HEALTHY
        assert observed["hung"].consecutive_failures == sweep_number
    hung.refresh_from_db()
    assert (hung.state, hung.consecutive_failures, hung.health_score) == (State.DOWN, 2, 0)
    assert HealthCheck.objects.filter(endpoint__cluster=local_cluster).count() == 8
    assert HealthCheck.objects.filter(endpoint=hung, ok=False, score=0).count() == 2


def test_endpoints_a_sweep_had_no_time_for_are_left_as_they_were_and_go_first_next(
    local_cluster: Cluster,
    silent_port: int,
    monkeypatch: pytest.MonkeyPatch,
    pgwarden_logs: pytest.LogCaptureFixture,
) -> None:
    # A machine short of CPU, in miniature: one connection set-up at a time, and a host
    # that hangs keeps its turn for the whole sweep.
    monkeypatch.setattr(probe, "MAX_CONCURRENT_SETUPS", 1)
    monkeypatch.setattr(probe, "SETUP_TURN_S", 10.0)
    configure(local_cluster, probe_timeout_s=1.0)
    # One healthy endpoint, probed a moment ago; two hosts never probed, which hang. (No
    # primary: it would go first, and its set-up time would cut into hung1's timeout.)
    Endpoint.objects.filter(cluster=local_cluster).exclude(name="replica1").update(enabled=False)
    Endpoint.objects.filter(cluster=local_cluster, name="replica1").update(
        last_checked_at=timezone.now()
    )
    add_endpoint(local_cluster, "hung1", silent_port)
    add_endpoint(local_cluster, "hung2", silent_port)

    first, elapsed = timed_sweep(local_cluster)

    assert elapsed < 1.0 + MARGIN_S
    # The longest unprobed first: hung1 holds the only turn till the end of the sweep.
    assert set(first) == {"hung1"}
    assert first["hung1"].consecutive_failures == 1
    for name in ("hung2", "replica1"):
        unprobed = Endpoint.objects.get(cluster=local_cluster, name=name)
        assert (unprobed.consecutive_failures, unprobed.state) == (0, State.UNKNOWN), name
        assert not HealthCheck.objects.filter(endpoint=unprobed).exists(), name
    assert "2 of 3 endpoints could not be probed within the 1 s probe timeout" in pgwarden_logs.text
    assert "hung2, replica1" in pgwarden_logs.text

    # Next sweep: hung1, whose probe failed, starts at once, outside the turns; hung2, the
    # longest unprobed, takes the turn, and keeps it.
    second, _ = timed_sweep(local_cluster)
    assert set(second) == {"hung1", "hung2"}
    assert second["hung1"].consecutive_failures == 2
    assert second["hung2"].consecutive_failures == 1

    # Both hung hosts are now suspects: the healthy endpoint gets its turn again.
    third, _ = timed_sweep(local_cluster)
    assert set(third) == {"replica1", "hung1", "hung2"}
    assert third["replica1"].result.ok, third["replica1"].result.error


def test_probe_order_is_the_primary_then_the_longest_unprobed() -> None:
    cluster = Cluster(name="c")
    now = timezone.now()

    def endpoint(pk: int, role: str, checked_s_ago: float | None) -> Endpoint:
        checked = None if checked_s_ago is None else now - timedelta(seconds=checked_s_ago)
        return Endpoint(pk=pk, cluster=cluster, name=f"e{pk}", role=role, last_checked_at=checked)

    endpoints = [
        endpoint(1, Role.REPLICA, 1),
        endpoint(2, Role.REPLICA, None),
        endpoint(3, Role.PRIMARY, 0),
        endpoint(4, Role.REPLICA, 5),
        endpoint(5, Role.REPLICA, None),
    ]

    assert [e.pk for e in probe_order(endpoints)] == [3, 2, 5, 4, 1]


def test_an_endpoint_whose_last_probe_failed_is_a_suspect() -> None:
    cluster = Cluster(name="c")
    assert not is_suspect(Endpoint(cluster=cluster, state=State.HEALTHY))
    assert not is_suspect(Endpoint(cluster=cluster, state=State.UNKNOWN))
    assert is_suspect(Endpoint(cluster=cluster, state=State.HEALTHY, last_error="no answer"))
    assert is_suspect(Endpoint(cluster=cluster, state=State.DOWN))


def test_many_hung_endpoints_still_cost_one_probe_timeout(
    local_cluster: Cluster, silent_port: int
) -> None:
    configure(local_cluster, probe_timeout_s=1.0)
    for index in range(6):
        add_endpoint(local_cluster, f"hung{index}", silent_port)

    observed, elapsed = timed_sweep(local_cluster)

    assert 1.0 <= elapsed < 1.0 + MARGIN_S, elapsed
    assert sum(o.result.ok for o in observed.values()) == 3


def test_a_sweep_never_unfences_an_endpoint_fenced_while_it_was_probed(
    local_cluster: Cluster, silent_port: int
) -> None:
    # The hung endpoint keeps the sweep busy for one probe timeout; meanwhile a failover
    # (here: an UPDATE) fences replica1, which the sweep loaded as healthy.
    configure(local_cluster, probe_timeout_s=1.0)
    add_endpoint(local_cluster, "hung", silent_port)
    sweep(local_cluster)
    fence = threading.Timer(
        0.3,
        lambda: Endpoint.objects.filter(cluster=local_cluster, name="replica1").update(
            state=State.FENCED
        ),
    )
    fence.start()
    sweep(local_cluster)
    fence.join()

    replica = Endpoint.objects.get(cluster=local_cluster, name="replica1")
    assert replica.state == State.FENCED
    observed = {o.endpoint.name: o for o in sweep(local_cluster)}
    assert observed["replica1"].state == State.FENCED
    replica.refresh_from_db()
    assert replica.state == State.FENCED


# Roles


def test_an_endpoint_whose_recovery_contradicts_its_role_is_flagged_and_not_read_from(
    local_cluster: Cluster, pg_cluster: LocalPostgresCluster, redis_server: Any
) -> None:
    configure(local_cluster, read_preference="secondary")
    impostor = add_endpoint(local_cluster, "impostor", pg_cluster.primary.port)

    observed = {o.endpoint.name: o for o in sweep(local_cluster)}

    assert observed["impostor"].role_mismatch
    assert not any(o.role_mismatch for name, o in observed.items() if name != "impostor")
    impostor.refresh_from_db()
    assert (impostor.role_mismatch, impostor.in_recovery) == (True, False)
    alert = Alert.objects.get(cluster=local_cluster, key=f"role_mismatch:{impostor.pk}")
    assert alert.severity == Alert.Severity.CRITICAL
    assert "registered as a replica but not in recovery" in alert.message
    routing.reset_router()
    try:
        served = {routing.execute("local", "SELECT 1").endpoint for _ in range(30)}
    finally:
        routing.reset_router()
    assert served == {"replica1", "replica2"}


def test_a_registered_primary_in_recovery_is_flagged(
    db: None, pg_cluster: LocalPostgresCluster
) -> None:
    swapped = Cluster.objects.create(name="swapped", auto_failover=False)
    # Registered the wrong way round: the "primary" is a replica and vice versa.
    for name, role, node in (("a", Role.PRIMARY, "replica1"), ("b", Role.REPLICA, "primary")):
        add_endpoint(
            swapped,
            name,
            pg_cluster.node(node).port,
            role=role,
            user=pg_cluster.user,
            password=pg_cluster.password,
        )
    Endpoint.objects.filter(cluster=swapped).update(dbname=pg_cluster.dbname)

    observed = {o.endpoint.name: o for o in sweep(swapped)}

    assert observed["a"].role_mismatch
    assert observed["b"].role_mismatch
    messages = sorted(Alert.objects.filter(cluster=swapped).values_list("message", flat=True))
    assert any("registered as primary but in recovery" in m for m in messages), messages
    assert any("registered as a replica but not in recovery" in m for m in messages), messages


# Topology notices


def test_the_topology_version_moves_only_when_routing_relevant_status_changes(
    local_cluster: Cluster, redis_server: Any
) -> None:
    client = topology.redis_client()

    def version() -> int:
        return int(client.get(topology.VERSION_KEY) or 0)

    before = version()
    sweep(local_cluster)  # unknown -> healthy
    assert version() > before
    before = version()
    sweep(local_cluster)
    sweep(local_cluster)
    assert version() == before, "an unchanged cluster must not make every process reload"
    configure(local_cluster, degraded_latency_ms=0.001)
    sweep(local_cluster)  # healthy -> degraded
    assert version() > before


def test_routing_relevant_change_rules() -> None:
    cluster = Cluster(name="c", max_replica_lag_s=10.0)
    endpoint = Endpoint(
        cluster=cluster,
        name="r",
        role=Role.REPLICA,
        state=State.HEALTHY,
        in_recovery=True,
        replication_lag_s=1.0,
        health_score=95,
    )
    answer = ProbeResult(ok=True, in_recovery=True, replay_lag_s=1.0, latency_ms=3.0)

    def changed(result: ProbeResult = answer, **derived: Any) -> bool:
        values: dict[str, Any] = {"state": State.HEALTHY, "score": 95, "role_mismatch": False}
        values.update(derived)
        return routing_relevant_change(Observation(endpoint, result, 0, **values), 10.0)

    assert not changed()
    assert not changed(score=88)  # jitter
    assert changed(score=85)
    assert changed(state=State.DEGRADED)
    assert changed(role_mismatch=True)
    assert changed(ProbeResult(ok=True, in_recovery=False))
    assert not changed(ProbeResult(ok=True, in_recovery=True, replay_lag_s=9.0))
    assert changed(ProbeResult(ok=True, in_recovery=True, replay_lag_s=11.0))
    endpoint.health_score = None
    assert changed()


def test_a_sweep_whose_probes_overran_their_deadline_was_starved() -> None:
    assert not sweep_was_starved(2.0, 2.0)
    assert not sweep_was_starved(2.49, 2.0)  # scheduling noise on a busy machine
    assert sweep_was_starved(2.6, 2.0)
    assert not sweep_was_starved(12.4, 10.0)  # a quarter of a long timeout is noise too
    assert sweep_was_starved(12.6, 10.0)


def test_a_starved_sweep_records_failed_probes_without_counting_them() -> None:
    cluster = Cluster(name="c", failure_threshold=3)
    endpoint = Endpoint(
        cluster=cluster, name="e", role=Role.PRIMARY, state=State.HEALTHY, consecutive_failures=2
    )
    failed = ProbeResult(ok=False, error="no answer from 10.0.0.1:5432 within 2 s")

    counted = observe(cluster, endpoint, failed, None)
    starved = observe(cluster, endpoint, failed, None, count_failure=False)

    assert (counted.consecutive_failures, counted.state) == (3, State.DOWN)
    assert (starved.consecutive_failures, starved.state) == (2, State.HEALTHY)
    assert starved.score == 0
    answered = observe(
        cluster, endpoint, ProbeResult(ok=True, in_recovery=False), None, count_failure=False
    )
    assert (answered.consecutive_failures, answered.state) == (0, State.HEALTHY)


# Pure helpers kept from the first sweep


def test_state_rules_keep_fenced_endpoints_fenced() -> None:
    assert next_state("fenced", ok=True, consecutive_failures=0, threshold=3) == "fenced"
    assert next_state("down", ok=True, consecutive_failures=0, threshold=3) == "healthy"
    assert next_state("healthy", ok=False, consecutive_failures=2, threshold=3) == "healthy"
    assert next_state("healthy", ok=False, consecutive_failures=3, threshold=3) == "down"


def test_only_a_registered_primary_out_of_recovery_answers_as_the_primary() -> None:
    cluster = Cluster(name="c")
    primary = Endpoint(pk=1, cluster=cluster, name="p", role=Role.PRIMARY)
    replica = Endpoint(pk=2, cluster=cluster, name="r", role=Role.REPLICA)
    writable = ProbeResult(ok=True, in_recovery=False, wal_lsn=7)

    assert answering_primary([(replica, writable), (primary, writable)]) == (primary, writable)
    assert answering_primary([(primary, ProbeResult(ok=True, in_recovery=True))]) is None
    assert answering_primary([(primary, ProbeResult(ok=False, error="down"))]) is None
    assert answering_primary([(replica, writable)]) is None


def test_streams_seen_judges_each_replica_by_name_and_address() -> None:
    cluster = Cluster(name="c")
    replicas = [
        Endpoint(pk=1, cluster=cluster, name="r1", host="10.0.0.1"),
        Endpoint(pk=2, cluster=cluster, name="r2", host="db2.internal"),
        Endpoint(pk=3, cluster=cluster, name="r3", host="10.0.0.3"),
    ]
    resolutions = {
        "10.0.0.1": Resolution("10.0.0.1", frozenset({"10.0.0.1"})),
        "db2.internal": Resolution("db2.internal", frozenset({"10.0.0.2"})),
        "10.0.0.3": Resolution("10.0.0.3", frozenset({"10.0.0.3"})),
    }
    senders = [
        WalSender("r1", "10.0.0.1", "streaming"),
        WalSender("r2", "10.0.0.9", "streaming"),
    ]

    seen = streams_seen(senders, replicas, resolutions)

    assert seen[1].observed
    assert not seen[2].observed
    assert "not from an address of db2.internal (10.0.0.2)" in seen[2].detail
    assert not seen[3].observed
    assert seen[3].detail.startswith("no walsender named r3 on the primary")
    hidden = streams_seen([WalSender("r1", None, None)], replicas[:1], resolutions)
    assert hidden[1].detail == NO_CLIENT_ADDRESS


def test_lag_bytes_is_measured_against_the_primary_and_never_negative() -> None:
    replica = ProbeResult(ok=True, in_recovery=True, wal_lsn=1000)
    assert replication_lag_bytes(1500, replica) == 500
    assert replication_lag_bytes(900, replica) == 0
    assert replication_lag_bytes(None, replica) is None
    assert replication_lag_bytes(1500, ProbeResult(ok=False)) is None
