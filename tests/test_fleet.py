"""endpoints.services.fleet against the real local cluster and Redis.

Nothing here promotes or fences a server of the shared cluster: failover is only
exercised on its refusals (and the plan, which changes nothing); the real
procedure is tested in test_failover.py on clusters of its own.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
import redis
from django.conf import settings
from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from endpoints import control, health, routing
from endpoints import failover as failover_service
from endpoints.core.vocabulary import Role
from endpoints.devstack.localcluster import LocalPostgresCluster
from endpoints.models import Alert, Cluster, Endpoint, FailoverEvent, HealthCheck, State
from endpoints.services import fleet

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_router")]


def no_secrets(data: Any, pg_cluster: LocalPostgresCluster) -> str:
    """The data as JSON (so it must be JSON-safe), checked to hold no password."""
    text = json.dumps(data)
    assert pg_cluster.password not in text
    assert "password" not in text.replace("has_password", "")
    assert "postgresql://" not in text
    return text


def log_entries(endpoint_name: str) -> list[LogEntry]:
    return list(LogEntry.objects.filter(object_repr=f"local/{endpoint_name}").order_by("pk"))


def mcp_user_id() -> int:
    return int(get_user_model().objects.get(username=fleet.SYSTEM_USERNAME).pk)


# Lookups


def test_get_cluster_by_name_or_cluster_not_found_listing_the_known_ones(
    local_cluster: Cluster,
) -> None:
    assert fleet.get_cluster("local") == local_cluster
    with pytest.raises(routing.ClusterNotFound, match=r"'nope' \(known clusters: local\)"):
        fleet.get_cluster("nope")


def test_get_endpoint_or_unknown_endpoint_listing_the_clusters_endpoints(
    local_cluster: Cluster,
) -> None:
    assert fleet.get_endpoint(local_cluster, "replica1").name == "replica1"
    with pytest.raises(fleet.UnknownEndpoint) as caught:
        fleet.get_endpoint(local_cluster, "replica9")
    assert str(caught.value) == (
        "cluster 'local' has no endpoint 'replica9' (endpoints: primary, replica1, replica2)"
    )
    assert isinstance(caught.value, ValueError)


# Status


def test_results_are_typed_and_their_json_is_what_the_mcp_tools_send(
    local_cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    control.sweep(local_cluster)

    status = fleet.cluster_status("local")

    assert isinstance(status, fleet.ClusterStatus)
    assert [(e.name, e.role) for e in status.endpoints] == [
        ("primary", Role.PRIMARY),
        ("replica1", Role.REPLICA),
        ("replica2", Role.REPLICA),
    ]
    assert status.totals.endpoints == 3
    assert status.as_json()["endpoints"][0]["role"] == "primary"
    assert "warning" not in status.as_json()
    history = fleet.health_history("local", "replica1")
    assert history.summary.checks == len(history.checks) >= 1
    assert history.as_json()["summary"]["checks"] == history.summary.checks


def test_cluster_status_after_a_sweep_merges_the_registry_and_the_routers_stats(
    local_cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    pg_cluster.wait_for_replay()
    control.sweep(local_cluster)

    status = fleet.cluster_status("local").as_json()

    no_secrets(status, pg_cluster)
    assert status["cluster"] == "local"
    assert status["primary"] == "primary"
    assert status["auto_failover"] is True
    assert status["active_alerts"] == []
    assert status["last_failover"] is None
    endpoints = {e["name"]: e for e in status["endpoints"]}
    assert [e["name"] for e in status["endpoints"]] == ["primary", "replica1", "replica2"]
    assert {name: e["role"] for name, e in endpoints.items()} == {
        "primary": "primary",
        "replica1": "replica",
        "replica2": "replica",
    }
    for name, endpoint in endpoints.items():
        assert endpoint["state"] == State.HEALTHY, name
        assert endpoint["available"] is True
        assert endpoint["in_recovery"] is (name != "primary")
        assert endpoint["consecutive_failures"] == 0
        assert endpoint["last_checked_at"] is not None
        assert endpoint["last_latency_ms"] is not None
        assert endpoint["role_mismatch"] is False
        assert endpoint["fenced_reason"] is None
        assert endpoint["circuit"]["state"] == "closed"
        assert endpoint["health_score"] >= 90
    assert endpoints["primary"]["replication_lag_s"] is None
    assert endpoints["replica1"]["replication_lag_s"] == 0.0
    totals = status["totals"]
    assert totals["endpoints"] == 3
    assert totals["available_endpoints"] == 3
    assert totals["average_health_score"] >= 90


def test_cluster_status_shows_active_alerts_and_the_latest_failover(
    local_cluster: Cluster,
) -> None:
    now = timezone.now()
    replica = Endpoint.objects.get(cluster=local_cluster, name="replica2")
    Alert.objects.create(
        cluster=local_cluster,
        endpoint=replica,
        kind=Alert.Kind.REPLICA_LAG,
        key=f"replica_lag:{replica.pk}",
        severity=Alert.Severity.WARNING,
        message="replica2 lags 12 s",
        raised_at=now,
    )
    Alert.objects.create(
        cluster=local_cluster,
        kind=Alert.Kind.SLOW_RESPONSE,
        key="slow_response",
        severity=Alert.Severity.WARNING,
        message="was slow",
        raised_at=now - timedelta(minutes=5),
        cleared_at=now,
    )
    for minutes_ago, outcome in ((30, "aborted"), (10, "succeeded")):
        FailoverEvent.objects.create(
            cluster=local_cluster,
            kind=FailoverEvent.Kind.MANUAL,
            old_primary_name="replica1",
            new_primary_name="primary",
            reason="a test",
            started_at=now - timedelta(minutes=minutes_ago),
            finished_at=now - timedelta(minutes=minutes_ago - 1),
            outcome=outcome,
            steps=[{"at": now.isoformat(), "step": "plan", "ok": True, "detail": "x"}],
        )

    status = fleet.cluster_status("local").as_json()

    assert status["active_alerts"] == [
        {
            "key": f"replica_lag:{replica.pk}",
            "kind": "replica_lag",
            "severity": "warning",
            "message": "replica2 lags 12 s",
            "endpoint": "replica2",
            "since": now.isoformat(),
        }
    ]
    last = status["last_failover"]
    assert last["outcome"] == "succeeded"
    assert (last["kind"], last["from"], last["to"]) == ("manual", "replica1", "primary")
    assert last["started_at"] == (now - timedelta(minutes=10)).isoformat()
    assert last["finished_at"] == (now - timedelta(minutes=9)).isoformat()
    assert "steps" not in last
    json.dumps(status)


def test_an_endpoint_the_router_has_not_seen_yet_is_listed_unavailable(
    local_cluster: Cluster,
) -> None:
    fleet.cluster_status("local").as_json()  # the router takes its snapshot
    Endpoint.objects.filter(cluster=local_cluster, name="replica2").update(name="late")
    # .update() sends no signal: the router's snapshot still says replica2.

    endpoints = {e["name"]: e for e in fleet.cluster_status("local").as_json()["endpoints"]}

    assert endpoints["late"]["available"] is False
    assert endpoints["late"]["requests"] == 0
    assert endpoints["late"]["circuit"] is None


# Live probes


def test_database_info_probes_every_endpoint_and_shows_no_password(
    local_cluster: Cluster, pg_cluster: LocalPostgresCluster, closed_port: int
) -> None:
    fleet.add_endpoint(
        "local", name="gone", host="127.0.0.1", port=closed_port, password="pw"
    ).as_json()

    info = fleet.database_info("local").as_json()

    no_secrets(info, pg_cluster)
    endpoints = {e["name"]: e for e in info["endpoints"]}
    assert [e["name"] for e in info["endpoints"]] == ["primary", "gone", "replica1", "replica2"]
    for name in ("primary", "replica1", "replica2"):
        endpoint = endpoints[name]
        assert endpoint["reachable"] is True, endpoint["error"]
        assert endpoint["server_version"].startswith("15")
        assert endpoint["in_recovery"] is (name != "primary")
        assert endpoint["error"] is None
        assert endpoint["database"] == pg_cluster.dbname
        # Probed as the assistant's role, as its routed reads connect.
        assert endpoint["user"] == pg_cluster.assistant_user
        assert endpoint["port"] == pg_cluster.node(name).port
        assert 0 < endpoint["connections_in_use"] <= endpoint["max_connections"]
    assert endpoints["primary"]["pool"] == {
        "min_size": 1,
        "max_size": 10,
        "timeout_s": 5.0,
        "max_idle_s": 300.0,
        "max_lifetime_s": 3600.0,
        "connect_timeout_s": 3,
        "statement_timeout_ms": 30000,
    }
    gone = endpoints["gone"]
    assert gone["reachable"] is False
    assert gone["server_version"] is None
    assert gone["in_recovery"] is None
    assert str(closed_port) in gone["error"]


# Health history and checks


def test_health_history_after_two_sweeps_is_newest_first_with_a_summary(
    local_cluster: Cluster,
) -> None:
    control.sweep(local_cluster)
    control.sweep(local_cluster)
    old = Endpoint.objects.get(cluster=local_cluster, name="replica1")
    HealthCheck.objects.create(  # outside the window
        endpoint=old, checked_at=timezone.now() - timedelta(hours=2), ok=False, error="old"
    )

    history = fleet.health_history("local", "replica1").as_json()

    json.dumps(history)
    assert (history["cluster"], history["endpoint"]) == ("local", "replica1")
    checks = history["checks"]
    assert len(checks) == 2
    assert checks[0]["checked_at"] > checks[1]["checked_at"]
    for check in checks:
        assert check["ok"] is True
        assert check["in_recovery"] is True
        assert check["error"] is None
        assert check["latency_ms"] > 0
        assert check["score"] >= 90
        assert check["lag_s"] == 0.0
    assert history["truncated"] is False
    summary = history["summary"]
    assert (summary["checks"], summary["failures"], summary["availability_pct"]) == (2, 0, 100.0)
    assert summary["avg_latency_ms"] > 0

    last = fleet.health_history("local", "replica1", limit=1).as_json()
    assert last["checks"] == checks[:1]
    assert last["truncated"] is True
    assert last["summary"]["checks"] == 2  # the window, not the page

    week = fleet.health_history("local", "replica1", since_minutes=7 * 24 * 60).as_json()
    assert len(week["checks"]) == 3
    assert week["checks"][-1]["error"] == "old"
    assert (week["summary"]["checks"], week["summary"]["failures"]) == (3, 1)
    assert week["summary"]["availability_pct"] == 66.67


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"since_minutes": 0}, "since_minutes"),
        ({"since_minutes": 10081}, "since_minutes"),
        ({"since_minutes": "60"}, "since_minutes"),
        ({"since_minutes": True}, "since_minutes"),
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"limit": 2.5}, "limit"),
    ],
)
def test_health_history_validates_its_bounds(
    local_cluster: Cluster, arguments: dict[str, Any], named: str
) -> None:
    with pytest.raises(ValueError, match=f"^{named} must be an integer from"):
        fleet.health_history("local", "replica1", **arguments).as_json()


def test_health_history_of_an_unknown_endpoint(local_cluster: Cluster) -> None:
    with pytest.raises(fleet.UnknownEndpoint, match="'nope'"):
        fleet.health_history("local", "nope").as_json()


def test_check_health_sweeps_now_and_reports_every_endpoint(
    local_cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    result = fleet.check_health("local").as_json()

    no_secrets(result, pg_cluster)
    assert result["swept"] is True
    assert result["skipped_because"] is None
    assert result["elapsed_s"] >= 0
    assert [e["name"] for e in result["endpoints"]] == ["primary", "replica1", "replica2"]
    for endpoint in result["endpoints"]:
        assert endpoint["ok"] is True
        assert endpoint["state"] == State.HEALTHY
        assert endpoint["health_score"] >= 90
        assert endpoint["latency_ms"] > 0
        assert endpoint["error"] is None
        assert endpoint["checked_at"] is not None
    assert HealthCheck.objects.filter(endpoint__cluster=local_cluster).count() == 3


def test_check_health_skips_while_another_sweep_holds_the_lock(local_cluster: Cluster) -> None:
    client = redis.Redis.from_url(settings.REDIS_URL)
    lock = health.sweep_lock(local_cluster, client=client)
    assert lock.acquire()
    try:
        result = fleet.check_health("local").as_json()
    finally:
        lock.release()

    assert result["swept"] is False
    assert result["skipped_because"] == "another sweep of this cluster is running"
    assert [e["ok"] for e in result["endpoints"]] == [None, None, None]  # never checked
    assert not HealthCheck.objects.exists()


def test_check_health_leaves_disabled_endpoints_out_and_reports_failures(
    local_cluster: Cluster, closed_port: int
) -> None:
    fleet.add_endpoint(
        "local", name="gone", host="127.0.0.1", port=closed_port, password="pw"
    ).as_json()
    fleet.set_endpoint("local", "replica2", enabled=False).as_json()

    endpoints = {e["name"]: e for e in fleet.check_health("local").as_json()["endpoints"]}

    assert set(endpoints) == {"primary", "gone", "replica1"}
    assert endpoints["gone"]["ok"] is False
    assert endpoints["gone"]["latency_ms"] is None
    assert str(closed_port) in endpoints["gone"]["error"]
    assert endpoints["gone"]["health_score"] == 0


# Failover: only what changes nothing


def test_plan_failover_names_a_replica_and_changes_nothing(local_cluster: Cluster) -> None:
    plan = fleet.plan_failover("local").as_json()

    json.dumps(plan)
    assert plan["primary"] == "primary"
    assert plan["primary_answers"] is True
    assert plan["candidate"] in ("replica1", "replica2")
    assert sorted(plan["ranking"]) == ["replica1", "replica2"]
    assert plan["excluded"] == {}
    assert f"candidate: {plan['candidate']}" in plan["description"]
    assert not FailoverEvent.objects.exists()
    assert Endpoint.objects.get(cluster=local_cluster, name="primary").role == "primary"


def test_failover_to_an_unknown_endpoint_or_the_primary_is_refused(
    local_cluster: Cluster,
) -> None:
    with pytest.raises(failover_service.UnknownEndpoint, match="no endpoint 'nonexistent'"):
        fleet.failover("local", to="nonexistent").as_json()
    with pytest.raises(failover_service.UnknownEndpoint, match="already the primary"):
        fleet.failover("local", to="primary", switchover=True).as_json()
    with pytest.raises(routing.ClusterNotFound):
        fleet.failover("nope").as_json()
    with pytest.raises(ValueError, match="actor"):
        fleet.failover("local", actor="").as_json()
    assert not FailoverEvent.objects.exists()


def test_a_switchover_to_a_fenced_replica_is_refused_before_anything_happens(
    local_cluster: Cluster,
) -> None:
    # Fenced in the registry only: the server itself is left alone.
    Endpoint.objects.filter(cluster=local_cluster, name="replica2").update(state=State.FENCED)

    with pytest.raises(failover_service.FailoverError, match="nothing changed") as caught:
        fleet.failover("local", to="replica2", switchover=True).as_json()

    assert "replica2" in str(caught.value)
    assert not FailoverEvent.objects.exists()
    roles = dict(Endpoint.objects.filter(cluster=local_cluster).values_list("name", "role"))
    assert roles == {"primary": "primary", "replica1": "replica", "replica2": "replica"}


def test_failover_event_data_matches_the_model() -> None:
    now = timezone.now()
    event = FailoverEvent(
        pk=7,
        kind="switchover",
        outcome="succeeded",
        reason="planned",
        old_primary_name="a",
        new_primary_name="",
        started_at=now,
        finished_at=None,
        steps=[{"at": "t", "step": "plan", "ok": True, "detail": "d"}],
    )
    assert fleet.failover_event_data(event) == {
        "id": 7,
        "kind": "switchover",
        "outcome": "succeeded",
        "reason": "planned",
        "from": "a",
        "to": None,
        "started_at": now.isoformat(),
        "finished_at": None,
        "steps": [{"at": "t", "step": "plan", "ok": True, "detail": "d"}],
    }


# Adding endpoints


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"name": "r3", "port": 0}, "port"),
        ({"name": "r3", "port": 70000}, "port"),
        ({"name": "r3", "port": "five"}, "port"),
        ({"name": ""}, "name"),
        ({"name": "no spaces"}, "name"),
        ({"name": "replica1"}, "name"),
        ({"name": "r3", "role": "boss"}, "role"),
        ({"name": "r3", "role": "primary"}, "role"),
        ({"name": "r3", "weight": -1}, "weight"),
        ({"name": "r3", "host": ""}, "host"),
        ({"name": "r3", "sslmode": "verify-full"}, "sslrootcert"),
        ({"name": "r3", "password": 42}, "password"),
    ],
)
def test_add_endpoint_refuses_what_the_admin_refuses_naming_the_field(
    local_cluster: Cluster, arguments: dict[str, Any], field: str
) -> None:
    arguments = {"host": "127.0.0.1", "port": 5432, "password": "new-address", **arguments}

    with pytest.raises(fleet.InvalidInput) as caught:
        fleet.add_endpoint("local", **arguments).as_json()

    assert list(caught.value.errors) == [field]
    assert str(caught.value).startswith(f"invalid endpoint: {field}: ")
    assert Endpoint.objects.filter(cluster=local_cluster).count() == 3
    assert not LogEntry.objects.exists()


def test_add_endpoint_reports_every_invalid_field_at_once(local_cluster: Cluster) -> None:
    with pytest.raises(fleet.InvalidInput) as caught:
        fleet.add_endpoint(
            "local", name="replica1", host="h", port=0, weight=-5, password="p"
        ).as_json()
    assert sorted(caught.value.errors) == ["name", "port", "weight"]
    assert caught.value.errors["name"] == ["This cluster already has an endpoint with this name."]
    assert caught.value.errors["port"] == ["Port must be between 1 and 65535."]


def test_add_endpoint_at_a_registered_address_inherits_its_credentials_and_is_logged(
    local_cluster: Cluster, pg_cluster: LocalPostgresCluster, admin_client: Client
) -> None:
    port = pg_cluster.node("replica1").port  # replica1's address: its password may go there

    added = fleet.add_endpoint(
        "local", name="replica3", host="127.0.0.1", port=port, weight=5
    ).as_json()

    no_secrets(added, pg_cluster)
    assert {k: added[k] for k in ("cluster", "name", "role", "port", "weight", "enabled")} == {
        "cluster": "local",
        "name": "replica3",
        "role": "replica",
        "port": port,
        "weight": 5,
        "enabled": True,
    }
    assert (added["database"], added["user"]) == (pg_cluster.dbname, pg_cluster.user)
    assert (added["sslmode"], added["has_password"]) == ("disable", True)
    stored = Endpoint.objects.get(cluster=local_cluster, name="replica3")
    assert stored.get_password().reveal() == pg_cluster.password
    probed = {e["name"]: e for e in fleet.database_info("local").as_json()["endpoints"]}["replica3"]
    assert probed["reachable"] is True, probed["error"]
    assert probed["in_recovery"] is True

    [entry] = log_entries("replica3")
    assert entry.action_flag == ADDITION
    assert entry.object_id == str(stored.pk)
    assert entry.user_id == mcp_user_id()
    assert entry.get_change_message() == (
        "Added via MCP: replica at 127.0.0.1:"
        f"{port}; dbname, user, sslmode, password from endpoint 'replica1'."
    )
    user = get_user_model().objects.get(username=fleet.SYSTEM_USERNAME)
    assert user.is_active is False
    assert user.has_usable_password() is False
    history = admin_client.get(reverse("admin:endpoints_endpoint_history", args=[stored.pk]))
    assert history.status_code == 200
    assert "Added via MCP" in history.content.decode()


def test_add_endpoint_at_a_new_address_never_gets_a_stored_password(
    local_cluster: Cluster, closed_port: int
) -> None:
    with pytest.raises(fleet.InvalidInput) as caught:
        fleet.add_endpoint("local", name="elsewhere", host="127.0.0.1", port=closed_port).as_json()
    assert list(caught.value.errors) == ["password"]
    assert f"127.0.0.1:{closed_port} is a new address" in str(caught.value)
    assert not Endpoint.objects.filter(cluster=local_cluster, name="elsewhere").exists()

    # The same server under another name counts as new too: only host and port match.
    with pytest.raises(fleet.InvalidInput):
        fleet.add_endpoint(
            "local",
            name="alias",
            host="localhost",
            port=local_cluster.endpoints.get(name="primary").port,
        ).as_json()

    added = fleet.add_endpoint(
        "local", name="elsewhere", host="127.0.0.1", port=closed_port, password="its-own"
    ).as_json()
    assert added["has_password"] is True
    stored = Endpoint.objects.get(cluster=local_cluster, name="elsewhere")
    assert stored.get_password().reveal() == "its-own"


@pytest.mark.parametrize(
    "host", ["/var/run/postgresql", "db1,db2", "db1 db2", "host=evil", "[::1]", "a..b", ""]
)
def test_add_endpoint_refuses_a_host_that_is_not_one_name_or_address(
    local_cluster: Cluster, host: str
) -> None:
    with pytest.raises(fleet.InvalidInput) as caught:
        fleet.add_endpoint("local", name="odd", host=host, port=5432, password="pw").as_json()
    assert list(caught.value.errors) == ["host"]


def test_add_endpoint_with_its_own_credentials_and_a_second_change_reuses_the_user(
    local_cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    added = fleet.add_endpoint(
        "local",
        name="other",
        host="127.0.0.1",
        port=pg_cluster.node("replica2").port,
        dbname="postgres",
        user="someone",
        password="not-the-real-one",
        sslmode="prefer",
        enabled=False,
        promotion_priority=3,
    ).as_json()
    assert (added["database"], added["user"], added["sslmode"]) == ("postgres", "someone", "prefer")
    assert (added["enabled"], added["promotion_priority"]) == (False, 3)
    assert "not-the-real-one" not in json.dumps(added)
    stored = Endpoint.objects.get(cluster=local_cluster, name="other")
    assert stored.get_password().reveal() == "not-the-real-one"
    [entry] = log_entries("other")
    assert entry.get_change_message() == (
        f"Added via MCP: replica at 127.0.0.1:{pg_cluster.node('replica2').port}."
    )

    fleet.set_endpoint("local", "other", weight=1).as_json()
    assert get_user_model().objects.filter(username=fleet.SYSTEM_USERNAME).count() == 1


# Changing and removing endpoints


def test_set_endpoint_changes_weight_and_enabled_and_logs_old_and_new(
    local_cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    changed = fleet.set_endpoint("local", "replica2", weight=50).as_json()

    no_secrets(changed, pg_cluster)
    assert changed["weight"] == 50
    assert changed["changes"] == {"weight": {"from": 100, "to": 50}}
    assert Endpoint.objects.get(cluster=local_cluster, name="replica2").weight == 50

    both = fleet.set_endpoint("local", "replica2", weight=0, enabled=False).as_json()
    assert both["changes"] == {
        "weight": {"from": 50, "to": 0},
        "enabled": {"from": True, "to": False},
    }
    stored = Endpoint.objects.get(cluster=local_cluster, name="replica2")
    assert (stored.weight, stored.enabled) == (0, False)

    same = fleet.set_endpoint("local", "replica2", enabled=False).as_json()
    assert same["changes"] == {}

    entries = log_entries("replica2")
    assert [e.action_flag for e in entries] == [CHANGE, CHANGE]
    assert [e.get_change_message() for e in entries] == [
        "Changed via MCP: weight 100 → 50.",
        "Changed via MCP: weight 50 → 0; enabled True → False.",
    ]
    assert {e.user_id for e in entries} == {mcp_user_id()}


def test_set_endpoint_disabling_reaches_the_router(local_cluster: Cluster) -> None:
    fleet.cluster_status("local").as_json()  # the router takes its snapshot
    fleet.set_endpoint("local", "replica1", enabled=False).as_json()

    endpoints = {e["name"]: e for e in fleet.cluster_status("local").as_json()["endpoints"]}
    assert endpoints["replica1"]["enabled"] is False
    assert endpoints["replica1"]["available"] is False


def test_set_endpoint_validates(local_cluster: Cluster) -> None:
    with pytest.raises(ValueError, match="weight or enabled"):
        fleet.set_endpoint("local", "replica1").as_json()
    with pytest.raises(fleet.InvalidInput) as caught:
        fleet.set_endpoint("local", "replica1", weight=-1).as_json()
    assert list(caught.value.errors) == ["weight"]
    assert str(caught.value).startswith("invalid endpoint: weight: ")
    with pytest.raises(fleet.InvalidInput, match="enabled"):
        fleet.set_endpoint("local", "replica1", enabled="maybe").as_json()  # type: ignore[arg-type]
    with pytest.raises(fleet.UnknownEndpoint, match="replica9"):
        fleet.set_endpoint("local", "replica9", weight=1).as_json()
    assert Endpoint.objects.get(cluster=local_cluster, name="replica1").weight == 100
    assert not LogEntry.objects.exists()


def test_remove_endpoint_removes_and_logs_but_never_the_primary(local_cluster: Cluster) -> None:
    replica = Endpoint.objects.get(cluster=local_cluster, name="replica2")

    assert fleet.remove_endpoint("local", "replica2").as_json() == {
        "cluster": "local",
        "removed": "replica2",
    }

    assert not Endpoint.objects.filter(pk=replica.pk).exists()
    [entry] = log_entries("replica2")
    assert entry.action_flag == DELETION
    assert entry.object_id == str(replica.pk)
    assert entry.get_change_message() == (
        f"Deleted via MCP: replica at {replica.host}:{replica.port}."
    )
    assert entry.user_id == mcp_user_id()

    with pytest.raises(ValueError, match="'primary' is the primary of cluster 'local'"):
        fleet.remove_endpoint("local", "primary").as_json()
    assert Endpoint.objects.filter(cluster=local_cluster, name="primary").exists()
    with pytest.raises(fleet.UnknownEndpoint, match="replica2"):
        fleet.remove_endpoint("local", "replica2").as_json()
    assert len(LogEntry.objects.all()) == 1
