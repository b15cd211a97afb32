"""routing.topology: snapshots from the registry, versions through Redis, fallbacks without it."""

from __future__ import annotations

import time
from typing import Any

import pytest

from endpoints.core.waiting import poll_until
from endpoints.models import Cluster, Endpoint
from endpoints.routing import topology
from endpoints.routing.topology import Topology, load_snapshot

pytestmark = pytest.mark.django_db(transaction=True)


def _cluster() -> Cluster:
    cluster = Cluster.objects.create(name="topo", read_preference="secondary")
    primary = Endpoint(cluster=cluster, name="p", host="127.0.0.1", port=5432, role="primary")
    primary.set_password("hunter2-topology")
    primary.save()
    Endpoint.objects.create(cluster=cluster, name="r", host="127.0.0.1", port=5433, weight=7)
    return cluster


def test_snapshot_carries_clusters_and_endpoints_without_showing_passwords() -> None:
    _cluster()
    snapshot = load_snapshot(version=3)
    view = snapshot.clusters["topo"]
    assert view.read_preference == "secondary"
    assert sorted(c.name for c in view.candidates) == ["p", "r"]
    assert view.endpoint("r").weight == 7
    assert view.has_replicas is True
    assert view.endpoint("p").connection is not None
    assert "hunter2-topology" not in repr(snapshot)
    assert snapshot.version == 3


def test_saving_an_endpoint_bumps_the_shared_version(redis_server: Any) -> None:
    cluster = _cluster()
    client = topology.redis_client()
    before = int(client.get(topology.VERSION_KEY) or 0)
    Endpoint.objects.filter(cluster=cluster, name="r").get().save()
    assert int(client.get(topology.VERSION_KEY) or 0) == before + 1


def test_another_process_view_follows_a_version_bump(redis_server: Any) -> None:
    cluster = _cluster()
    view = Topology(check_interval_s=0.05)
    assert view.current().clusters["topo"].endpoint("r").weight == 7
    # An .update() skips signals: callers publish the change themselves.
    Endpoint.objects.filter(cluster=cluster, name="r").update(weight=9)
    assert view.current().clusters["topo"].endpoint("r").weight == 7  # not yet told
    topology.bump_version()
    time.sleep(0.1)
    assert view.current().clusters["topo"].endpoint("r").weight == 9


def test_without_redis_the_snapshot_is_reloaded_from_the_database_every_second(
    closed_port: int,
) -> None:
    cluster = _cluster()
    view = Topology(f"redis://127.0.0.1:{closed_port}/0", check_interval_s=0.05)
    assert view.current().clusters["topo"].endpoint("r").weight == 7
    Endpoint.objects.filter(cluster=cluster, name="r").update(weight=11)
    reloaded = poll_until(
        lambda: view.current().clusters["topo"].endpoint("r").weight == 11,
        timeout_s=topology.REDIS_DOWN_RELOAD_S + 1.0,
    )
    assert reloaded, "the snapshot was never reloaded"


def test_an_undecryptable_password_makes_the_endpoint_unusable_not_the_cluster() -> None:
    cluster = _cluster()
    Endpoint.objects.filter(cluster=cluster, name="r").update(password_encrypted="not-a-token")
    view = load_snapshot(version=None).clusters["topo"]
    assert [c.name for c in view.candidates] == ["p"]
    assert "cannot be decrypted" in view.unusable["r"]
