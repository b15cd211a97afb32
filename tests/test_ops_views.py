"""/healthz, /readyz and the per-cluster checks (/clusters/<name>/primary and /replica).

The shared local cluster serves the checks that change only registry rows; the one that
fails over gets a PostgreSQL cluster of its own (conftest's ``fresh``).
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
from django.test import Client

from endpoints import control, failover
from endpoints.devstack.localcluster import LocalPostgresCluster, LocalRedis
from endpoints.models import Cluster, Endpoint, FailoverEvent, Role, State
from tests.test_metrics import broken_control_database, parse, value

CHECKS = ["/healthz", "/readyz", "/clusters/local/primary", "/clusters/local/replica"]


# Each test gets a router of its own (conftest), so router series start from nothing.
pytestmark = pytest.mark.usefixtures("fresh_router")


def update(cluster: Cluster, endpoint: str, **fields: Any) -> None:
    Endpoint.objects.filter(cluster=cluster, name=endpoint).update(**fields)


# Liveness


def test_healthz_answers_without_the_database(client: Client) -> None:
    # No django_db mark: any database access here would fail the test.
    for method in (client.get, client.head, client.options):
        response = method("/healthz")
        assert response.status_code == 200
        assert "no-cache" in response["Cache-Control"]
    assert client.get("/healthz").json() == {"alive": True}
    assert client.post("/healthz").status_code == 405


# Readiness


@pytest.mark.django_db(transaction=True)
def test_readyz_is_ready_when_the_database_and_redis_answer(
    client: Client, redis_server: LocalRedis
) -> None:
    response = client.get("/readyz")

    assert response.status_code == 200
    assert response.json() == {"ready": True, "checks": {"database": "ok", "redis": "ok"}}
    assert client.options("/readyz").status_code == 200


@pytest.mark.django_db(transaction=True)
def test_readyz_without_redis_is_not_ready_and_says_why_without_the_password(
    client: Client, settings: Any, redis_server: LocalRedis, closed_port: int
) -> None:
    # The shared Redis keeps running: the settings point at a port nothing listens on.
    password = "redis-password-never-shown"
    settings.REDIS_URL = f"redis://:{password}@127.0.0.1:{closed_port}/0"

    started = time.monotonic()
    response = client.get("/readyz")

    assert time.monotonic() - started < 5
    assert response.status_code == 503
    body = response.json()
    assert body["ready"] is False
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["redis"].startswith("unreachable: ")
    assert str(closed_port) in body["checks"]["redis"]
    assert password not in response.content.decode()


@pytest.mark.django_db(transaction=True)
def test_readyz_without_the_control_database_is_not_ready(
    client: Client, redis_server: LocalRedis
) -> None:
    with broken_control_database():
        response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json() == {
        "ready": False,
        "checks": {"database": "unreachable: unable to open database file", "redis": "ok"},
    }
    assert client.get("/readyz").status_code == 200  # and back once it is


# The primary


@pytest.mark.django_db(transaction=True)
def test_primary_is_the_registered_primary_with_its_host_and_port(
    client: Client, local_cluster: Cluster, pg_cluster: LocalPostgresCluster, redis_server: Any
) -> None:
    # Before any probe (state unknown) routing already sends writes there, and so does this.
    response = client.get("/clusters/local/primary")
    assert response.status_code == 200
    assert response.json()["state"] == "unknown"

    control.sweep(local_cluster)
    response = client.get("/clusters/local/primary")

    assert response.status_code == 200
    assert "no-cache" in response["Cache-Control"]
    stored = Endpoint.objects.get(cluster=local_cluster, name="primary")
    assert stored.last_checked_at is not None
    assert response.json() == {
        "cluster": "local",
        "role": "primary",
        "endpoint": "primary",
        "host": pg_cluster.primary.host,
        "port": pg_cluster.primary.port,
        "state": "healthy",
        "health_score": stored.health_score,
        "last_checked_at": stored.last_checked_at.isoformat(),
    }
    for method in (client.head, client.options):
        assert method("/clusters/local/primary").status_code == 200


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"state": State.DOWN}, "down"),
        ({"state": State.FENCED}, "fenced"),
        ({"enabled": False}, "disabled"),
        ({"weight": 0}, "weight 0"),
        ({"in_recovery": True, "role_mismatch": True}, "registered as primary but in recovery"),
    ],
)
@pytest.mark.django_db(transaction=True)
def test_primary_is_503_with_the_reason_when_it_takes_no_writes(
    client: Client, local_cluster: Cluster, fields: dict[str, Any], reason: str
) -> None:
    update(local_cluster, "primary", **fields)

    response = client.get("/clusters/local/primary")

    assert response.status_code == 503
    assert response.json() == {
        "cluster": "local",
        "error": "no primary takes writes",
        "reasons": {"primary": reason},
        "primary": None,
    }
    # HAProxy's default check method gets the same answer.
    assert client.options("/clusters/local/primary").status_code == 503


@pytest.mark.django_db(transaction=True)
def test_a_cluster_without_a_primary_says_so(client: Client, local_cluster: Cluster) -> None:
    update(local_cluster, "primary", role=Role.REPLICA)

    response = client.get("/clusters/local/primary")

    assert response.status_code == 503
    assert response.json() == {
        "cluster": "local",
        "error": "the cluster has no primary",
        "reasons": {},
        "primary": None,
    }


# Replicas


@pytest.mark.django_db(transaction=True)
def test_replica_is_the_healthiest_eligible_replica_with_every_candidate(
    client: Client, local_cluster: Cluster, pg_cluster: LocalPostgresCluster, redis_server: Any
) -> None:
    control.sweep(local_cluster)
    update(local_cluster, "replica1", health_score=80)
    update(local_cluster, "replica2", health_score=95)

    response = client.get("/clusters/local/replica")

    assert response.status_code == 200
    body = response.json()
    replica2 = pg_cluster.node("replica2")
    assert (body["cluster"], body["role"], body["endpoint"]) == ("local", "replica", "replica2")
    assert (body["host"], body["port"]) == (replica2.host, replica2.port)
    assert (body["health_score"], body["lag_s"], body["max_lag_s"]) == (95, 0.0, 10.0)
    assert [c["endpoint"] for c in body["candidates"]] == ["replica2", "replica1"]
    assert [c["port"] for c in body["candidates"]] == [
        replica2.port,
        pg_cluster.node("replica1").port,
    ]
    assert client.options("/clusters/local/replica").status_code == 200


@pytest.mark.django_db(transaction=True)
def test_replica_is_503_when_every_replica_is_disabled_or_down(
    client: Client, local_cluster: Cluster
) -> None:
    update(local_cluster, "replica1", enabled=False)
    update(local_cluster, "replica2", state=State.DOWN)

    response = client.get("/clusters/local/replica")

    assert response.status_code == 503
    assert response.json() == {
        "cluster": "local",
        "error": "no replica is eligible for reads",
        "max_lag_s": 10.0,
        "reasons": {"replica1": "disabled", "replica2": "down"},
        "candidates": [],
    }

    update(local_cluster, "replica2", state=State.HEALTHY)
    assert client.get("/clusters/local/replica").json()["endpoint"] == "replica2"


@pytest.mark.django_db(transaction=True)
def test_max_lag_s_overrides_the_clusters_lag_bound(client: Client, local_cluster: Cluster) -> None:
    update(local_cluster, "replica1", replication_lag_s=5.0, health_score=90)
    update(local_cluster, "replica2", replication_lag_s=0.2, health_score=80)

    def replicas(query: str) -> list[str]:
        response = client.get(f"/clusters/local/replica{query}")
        assert response.status_code == 200, response.json()
        return [c["endpoint"] for c in response.json()["candidates"]]

    assert replicas("") == ["replica1", "replica2"]  # the cluster's bound: 10 s
    assert replicas("?max_lag_s=1") == ["replica2"]
    assert replicas("?max_lag_s=5") == ["replica1", "replica2"]  # the bound is inclusive
    response = client.get("/clusters/local/replica?max_lag_s=0.1")
    assert response.status_code == 503
    assert response.json()["max_lag_s"] == 0.1
    assert response.json()["reasons"] == {
        "replica1": "replication lag 5 s over the 0.1 s bound",
        "replica2": "replication lag 0.2 s over the 0.1 s bound",
    }
    # A looser bound than the cluster's admits a replica the cluster's would not.
    Cluster.objects.filter(pk=local_cluster.pk).update(max_replica_lag_s=1.0)
    assert replicas("") == ["replica2"]
    assert replicas("?max_lag_s=30") == ["replica1", "replica2"]


@pytest.mark.django_db(transaction=True)
def test_a_replica_with_replay_paused_falls_out_under_a_small_max_lag_s(
    client: Client, local_cluster: Cluster, pg_cluster: LocalPostgresCluster, redis_server: Any
) -> None:
    with psycopg.connect(**pg_cluster.conninfo("primary"), autocommit=True) as primary:
        primary.execute("CREATE TABLE IF NOT EXISTS ops_views_t (v int)")
    pg_cluster.wait_for_replay()
    with psycopg.connect(**pg_cluster.conninfo("replica2"), autocommit=True) as replica:
        replica.execute("SELECT pg_wal_replay_pause()")
        try:
            with psycopg.connect(**pg_cluster.conninfo("primary"), autocommit=True) as primary:
                primary.execute("INSERT INTO ops_views_t SELECT generate_series(1, 100)")
            time.sleep(1.5)
            control.sweep(local_cluster)

            response = client.get("/clusters/local/replica?max_lag_s=0.5")
            assert response.status_code == 200
            assert [c["endpoint"] for c in response.json()["candidates"]] == ["replica1"]
            everything = client.get("/clusters/local/replica?max_lag_s=3600").json()
            assert {c["endpoint"] for c in everything["candidates"]} == {"replica1", "replica2"}
        finally:
            replica.execute("SELECT pg_wal_replay_resume()")
    pg_cluster.wait_for_replay()


@pytest.mark.parametrize("raw", ["abc", "", "-1", "nan", "inf", "-inf", "1e999", "5s"])
@pytest.mark.django_db(transaction=True)
def test_a_bad_max_lag_s_is_400_naming_it(client: Client, local_cluster: Cluster, raw: str) -> None:
    response = client.get("/clusters/local/replica", {"max_lag_s": raw})

    assert response.status_code == 400
    assert response.json() == {
        "error": f"max_lag_s must be a number of seconds, 0 or more (e.g. max_lag_s=5), "
        f"not {raw!r}",
        "parameter": "max_lag_s",
    }


# One endpoint at a time (?endpoint=)


@pytest.mark.django_db(transaction=True)
def test_endpoint_narrows_a_check_to_one_server(client: Client, local_cluster: Cluster) -> None:
    def status(check: str, endpoint: str, query: str = "") -> tuple[int, dict[str, Any]]:
        response = client.get(f"/clusters/local/{check}?endpoint={endpoint}{query}")
        return response.status_code, response.json()

    assert status("primary", "primary")[0] == 200
    assert status("primary", "replica1") == (
        503,
        {
            "cluster": "local",
            "error": "replica1 does not take writes",
            "reasons": {"replica1": "not the primary"},
            "primary": "primary",
        },
    )
    code, body = status("replica", "replica2")
    assert (code, body["endpoint"]) == (200, "replica2")  # that one, even if not the best
    assert [c["endpoint"] for c in body["candidates"]] == ["replica1", "replica2"]
    code, body = status("replica", "primary")
    assert (code, body["reasons"]) == (503, {"primary": "not a replica"})

    update(local_cluster, "replica2", replication_lag_s=3.0)
    code, body = status("replica", "replica2", "&max_lag_s=1")
    assert code == 503
    assert body["error"] == "replica2 is not eligible for reads"
    assert body["reasons"] == {"replica2": "replication lag 3 s over the 1 s bound"}
    assert [c["endpoint"] for c in body["candidates"]] == ["replica1"]

    update(local_cluster, "primary", state=State.DOWN)
    assert status("primary", "primary") == (
        503,
        {
            "cluster": "local",
            "error": "primary does not take writes",
            "reasons": {"primary": "down"},
            "primary": None,
        },
    )
    for check in ("primary", "replica"):
        assert status(check, "replica9") == (
            404,
            {"error": "cluster 'local' has no endpoint 'replica9'", "parameter": "endpoint"},
        )


# Lookups and methods


@pytest.mark.parametrize("check", ["primary", "replica"])
@pytest.mark.parametrize("name", ["nope", "no such", "a%00b"])
@pytest.mark.django_db(transaction=True)
def test_an_unknown_cluster_is_404_in_json(
    client: Client, local_cluster: Cluster, check: str, name: str
) -> None:
    response = client.get(f"/clusters/{name}/{check}")

    assert response.status_code == 404
    shown = name.replace("%00", "\x00")
    assert response.json() == {"cluster": shown, "error": f"no cluster named {shown!r}"}


@pytest.mark.parametrize("path", CHECKS)
@pytest.mark.django_db(transaction=True)
def test_checks_refuse_methods_that_change_things(
    client: Client, local_cluster: Cluster, path: str
) -> None:
    for method in (client.post, client.put, client.delete, client.patch):
        assert method(path).status_code == 405


# Following a failover


@pytest.mark.django_db(transaction=True)
def test_primary_follows_a_failover(
    client: Client, fresh: tuple[LocalPostgresCluster, Cluster]
) -> None:
    local, cluster = fresh
    control.sweep(cluster)
    old = local.node("primary")
    before = client.get(f"/clusters/{cluster.name}/primary")
    assert before.status_code == 200
    assert (before.json()["endpoint"], before.json()["port"]) == ("primary", old.port)

    event = failover.fail_over(cluster, kind=FailoverEvent.Kind.MANUAL, reason="test")

    assert event.outcome == FailoverEvent.Outcome.SUCCEEDED, event.steps
    new = local.node(event.new_primary_name)
    after = client.get(f"/clusters/{cluster.name}/primary")
    assert after.status_code == 200
    assert (after.json()["endpoint"], after.json()["port"]) == (new.name, new.port)
    assert new.port != old.port
    # The fenced old primary serves no reads either.
    replicas = client.get(f"/clusters/{cluster.name}/replica").json()
    assert old.name not in [c["endpoint"] for c in replicas["candidates"]]
    assert new.name not in [c["endpoint"] for c in replicas["candidates"]]

    samples = parse(client.get("/metrics").content.decode())
    labels = {"cluster": cluster.name, "kind": "manual", "outcome": "succeeded"}
    assert value(samples, "pgwarden_cluster_failovers_total", **labels) == 1
    since = value(samples, "pgwarden_cluster_seconds_since_last_failover", **labels)
    assert since is not None
    assert 0 <= since < 60
    old_labels = {"cluster": cluster.name, "endpoint": old.name, "role": "replica"}
    assert value(samples, "pgwarden_endpoint_state", **old_labels, state="fenced") == 1
    new_labels = {"cluster": cluster.name, "endpoint": new.name, "role": "primary"}
    assert value(samples, "pgwarden_endpoint_in_recovery", **new_labels) == 0
    assert value(samples, "pgwarden_cluster_primary_available", cluster=cluster.name) == 1
