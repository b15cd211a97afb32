"""Celery tasks, executed by a real worker through the real Redis broker."""

from __future__ import annotations

import json

import pytest

from endpoints.models import Endpoint, Role
from endpoints.tasks import check_connection

pytestmark = pytest.mark.django_db(transaction=True)


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
