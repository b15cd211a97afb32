"""Only a replica seen streaming from the primary, from the primary's side, is promoted.

The threat: whoever can call the admin tools registers an endpoint at a host of their
choosing (a server that answers probes however it likes) and asks for a failover to it;
pgwarden would promote it and re-point the real replicas, with their replication
credentials, at it. The decision (pure) is tested first, then the host resolver, then
real clusters: an endpoint registered at a real replica's host and port under another
name stands in for the fake server (it answers every probe exactly as a replica would).
"""

from __future__ import annotations

import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from endpoints import failover, health
from endpoints.devstack.localcluster import LocalPostgresCluster
from endpoints.health.probe import WalSender
from endpoints.health.upstream import (
    NO_CLIENT_ADDRESS,
    Resolution,
    Resolver,
    Streaming,
    canonical_address,
    lookup_addresses,
    recorded_streaming,
    streaming_from_primary,
)
from endpoints.models import Cluster, Endpoint, FailoverEvent, Role, State
from tests.helpers.registry import add_endpoint
from tests.test_failover import endpoint, record_streams, sql, step_names

# The decision: live, from the primary's walsenders

DB3 = Resolution("db3.internal", frozenset({"10.0.0.3"}))


def seen(name: str, resolution: Resolution, *senders: WalSender) -> Streaming:
    return streaming_from_primary(name, resolution, senders)


def test_a_walsender_with_the_name_an_address_of_the_host_and_streaming_is_observed() -> None:
    result = seen("replica3", DB3, WalSender("replica3", "10.0.0.3", "streaming"))
    assert result == Streaming(
        True, "walsender replica3 streams from 10.0.0.3, an address of db3.internal"
    )


def test_no_walsender_with_the_name_is_not_observed() -> None:
    result = seen(
        "replica3",
        DB3,
        WalSender("replica1", "10.0.0.1", "streaming"),
        WalSender("replica2", "10.0.0.2", "streaming"),
    )
    assert result == Streaming(
        False, "no walsender named replica3 on the primary (it has: replica1, replica2)"
    )
    assert (
        seen("replica3", DB3).detail == "no walsender named replica3 on the primary (it has none)"
    )


def test_names_must_match_exactly() -> None:
    result = seen("replica3", DB3, WalSender("Replica3", "10.0.0.3", "streaming"))
    assert not result.observed
    assert result.detail.startswith("no walsender named replica3 on the primary")


def test_a_walsender_from_another_address_is_not_observed() -> None:
    result = seen("replica1", DB3, WalSender("replica1", "10.0.0.9", "streaming"))
    assert result == Streaming(
        False,
        "walsender replica1 streams from 10.0.0.9, not from an address of db3.internal (10.0.0.3)",
    )
    literal = Resolution("10.0.0.3", frozenset({"10.0.0.3"}))
    assert seen("replica1", literal, WalSender("replica1", "10.0.0.9", "catchup")).detail == (
        "walsender replica1 connects from 10.0.0.9, not from 10.0.0.3"
    )


def test_a_hidden_client_address_means_pgwardens_role_lacks_pg_read_all_stats() -> None:
    # What pg_stat_replication shows a role without it: the name, and NULL for the rest.
    result = seen("replica3", DB3, WalSender("replica3", None, None))
    assert result == Streaming(False, NO_CLIENT_ADDRESS)
    assert "grant pg_read_all_stats to pgwarden's role" in result.detail


def test_a_replica_connected_through_a_unix_socket_cannot_be_matched_to_its_host() -> None:
    result = seen("replica3", DB3, WalSender("replica3", None, "streaming"))
    assert not result.observed
    assert result.detail == (
        "walsender replica3 connects through a Unix socket: it has no client address to "
        "match against db3.internal"
    )


def test_a_host_that_does_not_resolve_is_not_observed() -> None:
    unresolved = Resolution("db3.internal", frozenset(), "Name or service not known")
    result = seen("replica3", unresolved, WalSender("replica3", "10.0.0.3", "streaming"))
    assert result == Streaming(False, "db3.internal does not resolve (Name or service not known)")


def test_a_walsender_not_yet_streaming_is_not_observed() -> None:
    result = seen("replica3", DB3, WalSender("replica3", "10.0.0.3", "catchup"))
    assert result == Streaming(False, "walsender replica3 is catchup, not streaming")


def test_any_of_several_walsenders_with_the_name_may_be_the_one() -> None:
    result = seen(
        "replica3",
        DB3,
        WalSender("replica3", "10.0.0.9", "streaming"),
        WalSender("replica3", "10.0.0.3", "streaming"),
    )
    assert result.observed


def test_addresses_are_compared_in_canonical_form() -> None:
    v4 = Resolution("10.0.0.3", frozenset({"10.0.0.3"}))
    assert seen("r", v4, WalSender("r", "::ffff:10.0.0.3", "streaming")).observed
    v6 = Resolution("db6", frozenset({canonical_address("2001:DB8:0:0::1") or ""}))
    assert seen("r", v6, WalSender("r", "2001:db8::1", "streaming")).observed
    assert canonical_address("fe80::1%eth0") == "fe80::1"
    assert canonical_address("db3.internal") is None


# The decision: recorded, for when the primary is down

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def recorded(**overrides: Any) -> Streaming:
    fields: dict[str, Any] = {
        "primary": "pg1",
        "primary_pk": 1,
        "upstream_pk": 1,
        "upstream_name": "pg1",
        "observed_at": NOW - timedelta(seconds=3),
        "last_sweep_at": NOW - timedelta(seconds=3),
        "now": NOW,
    }
    fields.update(overrides)
    return recorded_streaming(**fields)


def test_recorded_streaming_from_the_current_primary_is_observed_with_its_age() -> None:
    assert recorded() == Streaming(True, "recorded streaming from pg1 3 s ago")
    ten_minutes = NOW - timedelta(minutes=10)
    old = recorded(observed_at=ten_minutes, last_sweep_at=ten_minutes)
    assert old == Streaming(True, "recorded streaming from pg1 10 min ago")


def test_a_record_older_than_the_last_sweep_that_saw_the_primary_is_not_observed() -> None:
    # Disabled during the primary's last sweeps: its record is from before them.
    stale = recorded(observed_at=NOW - timedelta(hours=3))
    assert stale == Streaming(
        False,
        "its record (3.0 h old) predates the last sweep that read pg1's pg_stat_replication "
        "(3 s ago), which did not include it (disabled then?)",
    )


def test_recorded_streaming_from_nothing_or_another_endpoint_is_not_observed() -> None:
    assert recorded(upstream_pk=None, upstream_name="") == Streaming(
        False, "not streaming from pg1 when a sweep last read its pg_stat_replication, 3 s ago"
    )
    assert recorded(upstream_pk=7, upstream_name="pg0") == Streaming(
        False, "last recorded streaming from pg0, not from the current primary pg1 (3 s ago)"
    )


def test_never_recorded_or_without_a_primary_is_not_observed() -> None:
    never = recorded(upstream_pk=None, upstream_name="", observed_at=None)
    assert not never.observed
    assert never.detail.startswith(
        "pg1 does not answer as a primary, and no sweep has recorded the replica streaming"
    )
    assert recorded(primary=None, primary_pk=None) == Streaming(
        False, "the cluster has no enabled primary for it to stream from"
    )


# Resolving hosts


class CountingLookup:
    """A DNS stand-in: fixed answers, counted; ``gate`` holds lookups until it is set."""

    def __init__(self, answers: dict[str, frozenset[str]]) -> None:
        self.answers = answers
        self.calls: list[str] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, host: str) -> frozenset[str]:
        self.calls.append(host)
        self.gate.wait(10)
        if host not in self.answers:
            raise OSError(f"{host}: Name or service not known")
        return self.answers[host]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_ip_addresses_resolve_to_themselves_without_a_lookup() -> None:
    lookup = CountingLookup({})
    resolved = Resolver(lookup).resolve_all(["10.0.0.3", "::1"], timeout_s=1)
    assert resolved["10.0.0.3"] == Resolution("10.0.0.3", frozenset({"10.0.0.3"}))
    assert resolved["::1"].addresses == frozenset({"::1"})
    assert lookup.calls == []


def test_resolutions_are_cached_for_a_minute_and_failures_for_less() -> None:
    lookup = CountingLookup({"db3.internal": frozenset({"10.0.0.3"})})
    clock = Clock()
    resolver = Resolver(lookup, ttl_s=60, failure_ttl_s=5, clock=clock)

    for _ in range(3):
        resolved = resolver.resolve_all(["db3.internal", "gone.internal"], timeout_s=1)
    assert resolved["db3.internal"].addresses == frozenset({"10.0.0.3"})
    assert "Name or service not known" in resolved["gone.internal"].error
    assert sorted(lookup.calls) == ["db3.internal", "gone.internal"]

    clock.now += 6  # the failure expired, the answer not
    resolver.resolve_all(["db3.internal", "gone.internal"], timeout_s=1)
    assert sorted(lookup.calls) == ["db3.internal", "gone.internal", "gone.internal"]

    clock.now += 60
    resolver.resolve_all(["db3.internal"], timeout_s=1)
    assert lookup.calls.count("db3.internal") == 2


def test_a_slow_lookup_counts_as_unresolved_and_lands_in_the_cache_later() -> None:
    lookup = CountingLookup({"slow.internal": frozenset({"10.0.0.5"})})
    lookup.gate.clear()
    resolver = Resolver(lookup)

    first = resolver.resolve_all(["slow.internal"], timeout_s=0.1)

    assert first["slow.internal"].error == "no answer from DNS within 0.1 s"
    lookup.gate.set()
    for _ in range(100):
        later = resolver.resolve_all(["slow.internal"], timeout_s=0)
        if not later["slow.internal"].error:
            break
        time.sleep(0.02)
    assert later["slow.internal"].addresses == frozenset({"10.0.0.5"})
    assert lookup.calls == ["slow.internal"]


def test_the_real_lookup_resolves_localhost_and_fails_for_a_reserved_name() -> None:
    assert "127.0.0.1" in lookup_addresses("localhost")
    with pytest.raises(socket.gaierror):
        lookup_addresses("nothing.invalid")
    resolved = Resolver().resolve_all(["nothing.invalid"], timeout_s=5)
    assert resolved["nothing.invalid"].error


# Real clusters

failover_db = pytest.mark.django_db(transaction=True)
LIVE_ROGUE = (
    "not seen streaming from the primary: no walsender named rogue on the primary "
    "(it has: replica1, replica2)"
)


def rogue_at_replica2(local: LocalPostgresCluster, cluster: Cluster) -> Endpoint:
    """An endpoint at replica2's own host and port: the same server, another name."""
    return add_endpoint(cluster, "rogue", local.node("replica2").port)


def recorded_upstreams(cluster: Cluster) -> dict[str, tuple[int | None, datetime | None]]:
    return {
        e.name: (e.upstream_id, e.upstream_observed_at)
        for e in Endpoint.objects.filter(cluster=cluster, role=Role.REPLICA)
    }


@failover_db
def test_an_endpoint_at_a_replicas_address_under_another_name_is_never_promoted(
    fresh: tuple[LocalPostgresCluster, Cluster],
) -> None:
    local, cluster = fresh
    rogue_at_replica2(local, cluster)

    plan = failover.plan_failover(cluster, to="rogue")
    assert plan.candidate is None
    assert plan.primary_answers is True
    assert plan.reason == f"rogue was requested but cannot be promoted: {LIVE_ROGUE}"
    assert plan.excluded == {"rogue": LIVE_ROGUE}
    refused = failover.fail_over(cluster, to="rogue", reason="test: failover to rogue")
    assert refused.outcome == FailoverEvent.Outcome.ABORTED
    assert LIVE_ROGUE in refused.reason
    assert step_names(refused) == ["plan"]
    switched = failover.switchover(cluster, to="rogue", timeout_s=5)
    assert switched.outcome == FailoverEvent.Outcome.ABORTED
    assert step_names(switched) == ["plan"]
    # Nothing changed: the primary still writes, replica2's server still replays.
    sql(local, "primary", "INSERT INTO t (note) VALUES ('still the primary')")
    assert sql(local, "replica2", "SELECT pg_is_in_recovery()") == [(True,)]
    assert endpoint(cluster, "primary").role == Role.PRIMARY
    assert endpoint(cluster, "primary").state != State.FENCED

    event = failover.fail_over(cluster, to="replica1", reason="test: failover to replica1")

    assert event.outcome == FailoverEvent.Outcome.SUCCEEDED, (event.reason, event.steps)
    assert f"not eligible: rogue: {LIVE_ROGUE}" in event.steps[0]["detail"]
    assert "walsender replica1 streams from 127.0.0.1" in event.steps[0]["detail"]
    assert endpoint(cluster, "replica1").role == Role.PRIMARY
    assert sql(local, "replica1", "SELECT pg_is_in_recovery()") == [(False,)]


@failover_db
def test_sweeps_keep_the_last_observation_while_the_primary_is_down_and_failover_uses_it(
    fresh: tuple[LocalPostgresCluster, Cluster],
) -> None:
    local, cluster = fresh
    rogue_at_replica2(local, cluster)
    record_streams(cluster)
    # replica2 is disabled for the primary's last sweep: its record is older than that one.
    Endpoint.objects.filter(cluster=cluster, name="replica2").update(enabled=False)
    health.probe_and_record(Cluster.objects.get(pk=cluster.pk))
    before = recorded_upstreams(cluster)
    primary = endpoint(cluster, "primary")
    assert before["replica1"][0] == before["replica2"][0] == primary.pk
    assert before["rogue"][0] is None
    assert before["rogue"][1] == before["replica1"][1]
    replica2_at, last_sweep_at = before["replica2"][1], before["replica1"][1]
    assert replica2_at is not None
    assert last_sweep_at is not None
    assert replica2_at < last_sweep_at

    local.stop_node("primary")
    Endpoint.objects.filter(cluster=cluster, name="replica2").update(enabled=True)
    for _ in range(2):
        observations = health.probe_and_record(Cluster.objects.get(pk=cluster.pk))
        assert not next(o for o in observations if o.endpoint.name == "primary").result.ok

    assert recorded_upstreams(cluster) == before
    assert endpoint(cluster, "primary").consecutive_failures == 2
    event = failover.on_primary_down(Cluster.objects.get(pk=cluster.pk))
    assert event is not None
    assert event.outcome == FailoverEvent.Outcome.SUCCEEDED, (event.reason, event.steps)
    assert event.new_primary_name == "replica1"
    plan = event.steps[0]["detail"]
    assert "recorded streaming from primary" in plan
    assert (
        "not eligible: rogue: not seen streaming from the primary: not streaming from primary "
        "when a sweep last read its pg_stat_replication"
    ) in plan
    assert "not eligible: replica2: not seen streaming from the primary: its record" in plan
    assert "predates the last sweep that read primary's pg_stat_replication" in plan


@failover_db
def test_without_any_recorded_observation_automatic_failover_promotes_nothing(
    fresh: tuple[LocalPostgresCluster, Cluster],
) -> None:
    local, cluster = fresh
    local.kill_node("primary")  # before any sweep saw the replicas streaming

    event = failover.on_primary_down(cluster)

    assert event is not None
    assert event.outcome == FailoverEvent.Outcome.ABORTED
    for name in ("replica1", "replica2"):
        assert (
            f"{name}: not seen streaming from the primary: primary does not answer as a "
            "primary, and no sweep has recorded the replica streaming from it"
        ) in event.reason
        assert sql(local, name, "SELECT pg_is_in_recovery()") == [(True,)]
    assert endpoint(cluster, "primary").role == Role.PRIMARY


@failover_db
def test_without_pg_read_all_stats_no_replica_is_seen_streaming_and_the_plan_says_so(
    fresh: tuple[LocalPostgresCluster, Cluster],
) -> None:
    local, cluster = fresh
    sql(local, "primary", "CREATE ROLE watcher LOGIN PASSWORD 'watcher-password'")
    local.wait_for_replay()
    for registered in Endpoint.objects.filter(cluster=cluster):
        registered.user = "watcher"
        registered.set_password("watcher-password")
        registered.save()

    plan = failover.plan_failover(cluster)

    assert plan.primary_answers is True
    assert plan.candidate is None
    hidden = f"not seen streaming from the primary: {NO_CLIENT_ADDRESS}"
    assert plan.excluded == {"replica1": hidden, "replica2": hidden}

    sql(local, "primary", "GRANT pg_read_all_stats TO watcher")
    plan = failover.plan_failover(cluster)
    assert plan.candidate in {"replica1", "replica2"}
    assert plan.excluded == {}
