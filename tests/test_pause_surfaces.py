"""The maintenance pause, shown and operated everywhere but MCP (tests/test_mcp.py has that).

``manage.py failover --pause/--resume``, the admin's actions and banner, the dashboard's
banner and JSON, the ``/metrics`` flag and the fleet service's ``cluster_status`` fields,
all on the control database (PostgreSQL) with no managed server needed: the pause is a
registry setting. That the control cycle honours it is tested in tests/test_control.py.
"""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.contrib.messages import get_messages
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse
from prometheus_client.parser import text_string_to_metric_families

from endpoints.models import Cluster, Role
from endpoints.services import fleet
from tests.helpers.registry import add_endpoint

pytestmark = pytest.mark.django_db

DATA = "/admin/fleet/data.json"
PAGE = "/admin/fleet/"


@pytest.fixture
def orders() -> Cluster:
    cluster = Cluster.objects.create(name="orders")
    add_endpoint(cluster, "p1", 1, role=Role.PRIMARY)
    add_endpoint(cluster, "r1", 2)
    return cluster


def _fresh(cluster: Cluster) -> Cluster:
    return Cluster.objects.get(pk=cluster.pk)


def _failover(*args: str) -> str:
    out = StringIO()
    call_command("failover", *args, stdout=out)
    return out.getvalue()


# manage.py failover --pause / --resume


def test_the_command_pauses_with_a_reason_and_resumes(orders: Cluster) -> None:
    said = _failover("orders", "--pause", "--reason", "OS  upgrade")
    stored = _fresh(orders)
    assert stored.paused
    assert stored.paused_at is not None
    assert stored.pause_reason == "OS upgrade"
    assert not stored.fails_over_automatically
    assert f"automatic failover of orders {stored.pause_text()}" in said
    assert "(OS upgrade)" in said

    again = _failover("orders", "--pause")  # idempotent: time and reason kept
    assert _fresh(orders).paused_at == stored.paused_at
    assert _fresh(orders).pause_reason == "OS upgrade"
    assert "OS upgrade" in again

    resumed = _failover("orders", "--resume")
    stored = _fresh(orders)
    assert (stored.paused, stored.paused_at, stored.pause_reason) == (False, None, "")
    assert stored.fails_over_automatically
    assert "resumed" in resumed
    assert "OS upgrade" in resumed
    assert "was not paused" in _failover("orders", "--resume")


@pytest.mark.parametrize(
    ("args", "refusal"),
    [
        (("--pause", "--resume"), "not allowed with argument"),
        (("--pause", "--switchover"), "--pause cannot be combined with --switchover"),
        (("--resume", "--to", "r1"), "--resume cannot be combined with --to"),
        (("--pause", "--dry-run"), "--pause cannot be combined with --dry-run"),
        (("--pause", "--timeout", "5"), "--pause cannot be combined with --timeout"),
        (("--resume", "--reason", "why"), "--reason goes with --pause"),
    ],
)
def test_the_command_refuses_pause_or_resume_with_other_options(
    orders: Cluster, args: tuple[str, ...], refusal: str
) -> None:
    with pytest.raises(CommandError, match=refusal):
        call_command("failover", "orders", *args, stdout=StringIO(), stderr=StringIO())
    assert not _fresh(orders).paused


def test_the_command_names_the_clusters_when_it_does_not_know_one(orders: Cluster) -> None:
    with pytest.raises(CommandError, match="registered: orders"):
        _failover("ghost", "--pause")


# The admin


def _act(client: Client, action: str, *clusters: Cluster) -> Any:
    return client.post(
        reverse("admin:endpoints_cluster_changelist"),
        {"action": action, "_selected_action": [c.pk for c in clusters]},
        follow=True,
    )


def test_admin_actions_pause_and_resume_and_the_list_shows_it(
    admin_client: Client, orders: Cluster
) -> None:
    other = Cluster.objects.create(name="billing")
    response = _act(admin_client, "pause_automatic_failover", orders)
    said = [str(m) for m in get_messages(response.wsgi_request)]
    stored = _fresh(orders)
    assert stored.paused
    assert "by root in the admin" in stored.pause_reason
    assert any(stored.pause_text() in message for message in said), said
    assert not _fresh(other).paused

    listing = admin_client.get(reverse("admin:endpoints_cluster_changelist")).content.decode()
    assert "failover paused" in listing.lower()
    assert listing.count('alt="True"') >= 2  # automatic failover on (both), paused (orders)

    response = _act(admin_client, "resume_automatic_failover", orders, other)
    said = [str(m) for m in get_messages(response.wsgi_request)]
    assert not _fresh(orders).paused
    assert "Automatic failover of orders resumed." in said
    assert "Automatic failover of billing was not paused." in said


def test_the_cluster_page_has_a_banner_while_paused_and_the_pause_is_read_only(
    admin_client: Client, orders: Cluster
) -> None:
    change = reverse("admin:endpoints_cluster_change", args=[orders.pk])
    assert 'id="pause-banner"' not in admin_client.get(change).content.decode()

    _failover("orders", "--pause", "--reason", "disk swap")
    page = admin_client.get(change).content.decode()
    assert 'id="pause-banner"' in page
    assert _fresh(orders).pause_text() in page
    assert "manage.py failover orders --resume" in page
    form = admin_client.get(change).context["adminform"].form
    assert not {"paused", "paused_at", "pause_reason"} & set(form.fields)


# The dashboard


def test_the_dashboard_shows_a_banner_and_the_json_says_the_pause(
    admin_client: Client, orders: Cluster
) -> None:
    [entry] = admin_client.get(DATA).json()["clusters"]
    assert (entry["paused"], entry["paused_since"], entry["pause_reason"]) == (False, None, "")
    assert "pgw-paused" not in admin_client.get(PAGE).content.decode()

    _failover("orders", "--pause", "--reason", "kernel update")
    stored = _fresh(orders)
    [entry] = admin_client.get(DATA).json()["clusters"]
    assert entry["paused"] is True
    assert stored.paused_at is not None
    assert entry["paused_since"] == stored.paused_at.isoformat()
    assert entry["pause_reason"] == "kernel update"
    assert "pgw-paused" in entry["html"]
    page = admin_client.get(PAGE).content.decode()
    assert f"Automatic failover {stored.pause_text()}" in page


# /metrics


def _paused_gauge(client: Client, cluster: str) -> float | None:
    text = client.get("/metrics").content.decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            gauge = sample.name == "pgwarden_cluster_failover_paused"
            if gauge and sample.labels == {"cluster": cluster}:
                return sample.value
    return None


@pytest.mark.usefixtures("fresh_router")
def test_the_metric_is_1_while_paused_then_0(client: Client, orders: Cluster) -> None:
    assert _paused_gauge(client, "orders") == 0
    _failover("orders", "--pause")
    assert _paused_gauge(client, "orders") == 1
    _failover("orders", "--resume")
    assert _paused_gauge(client, "orders") == 0


# The fleet service (cluster_status, pause_failover, resume_failover)


@pytest.mark.usefixtures("fresh_router")
def test_cluster_status_and_the_fleet_service_say_the_pause(orders: Cluster) -> None:
    status = fleet.cluster_status("orders")
    assert (status.paused, status.paused_since, status.pause_reason) == (False, None, "")

    paused = fleet.pause_failover("orders", "vacuum full", actor="tester")
    assert paused.paused
    assert paused.changed
    assert not paused.fails_over_automatically
    assert paused.pause_reason == "vacuum full (by tester)"
    assert paused.message == f"automatic failover of orders {_fresh(orders).pause_text()}"
    shown = fleet.cluster_status("orders").as_json()
    paused_at = _fresh(orders).paused_at
    assert paused_at is not None
    assert shown["paused"] is True
    assert shown["paused_since"] == paused_at.isoformat()
    assert shown["pause_reason"] == "vacuum full (by tester)"
    again = fleet.pause_failover("orders")
    assert not again.changed
    assert again.pause_reason == "vacuum full (by tester)"

    resumed = fleet.resume_failover("orders")
    assert resumed.changed
    assert not resumed.paused
    assert resumed.paused_since is None
    assert resumed.fails_over_automatically
    assert not fleet.resume_failover("orders").changed
    assert fleet.pause_failover("orders").pause_reason == "paused by mcp"
