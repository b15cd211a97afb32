"""Pausing automatic failover (issue 15, item 5): the registry change and the real guard.

The control cycle's side (a paused cluster alerts but does not hand over to failover) is in
tests/test_control.py; here ``failover.on_primary_down`` itself runs against the real
cluster with its primary unreachable, and must not promote while paused.
"""

from __future__ import annotations

import pytest

from endpoints import failover
from endpoints.core.maintenance import pause_text
from endpoints.models import Cluster, Endpoint, FailoverEvent, Role

pytestmark = pytest.mark.django_db(transaction=True)


def test_pause_records_when_and_why_and_is_idempotent(local_cluster: Cluster) -> None:
    first = failover.pause(local_cluster, "  storage   maintenance ")
    assert first.paused
    assert first.paused_at is not None
    assert first.pause_reason == "storage maintenance"
    assert not first.fails_over_automatically
    assert first.pause_text() == pause_text(first.paused_at, "storage maintenance")

    again = failover.pause(local_cluster)
    assert again.paused_at == first.paused_at  # still paused since the first time
    assert again.pause_reason == "storage maintenance"  # no new reason given: kept

    resumed = failover.resume(local_cluster)
    stored = Cluster.objects.get(pk=local_cluster.pk)
    for cluster in (resumed, stored):
        assert not cluster.paused
        assert cluster.paused_at is None
        assert cluster.pause_reason == ""
        assert cluster.pause_text() == ""
        assert cluster.fails_over_automatically


def test_a_long_reason_is_cut_to_the_field(local_cluster: Cluster) -> None:
    stored = failover.pause(local_cluster, "x" * 500)
    assert len(stored.pause_reason) == Cluster._meta.get_field("pause_reason").max_length


def test_pause_text_without_a_time_or_reason() -> None:
    assert pause_text(None, "") == "paused since an unknown time"


def test_a_paused_cluster_is_not_failed_over_even_with_its_primary_unreachable(
    local_cluster: Cluster, closed_port: int, redis_server: object
) -> None:
    # Real failover code, real servers: only the registered primary's port is wrong, so
    # without the pause this call would promote a replica of the shared cluster.
    Cluster.objects.filter(pk=local_cluster.pk).update(failure_threshold=1, auto_failover=True)
    Endpoint.objects.filter(cluster=local_cluster, name="primary").update(
        port=closed_port, consecutive_failures=5
    )
    paused = failover.pause(local_cluster, "maintenance")

    assert failover.on_primary_down(paused) is None

    assert not FailoverEvent.objects.filter(cluster=local_cluster).exists()
    primary = Endpoint.objects.get(cluster=local_cluster, role=Role.PRIMARY)
    assert primary.name == "primary"
