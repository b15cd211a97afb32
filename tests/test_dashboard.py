"""The fleet dashboard (endpoints.web.dashboard) through Django's test client.

The registry rows are made here (no servers needed): states, scores and history are
what sweeps would have written. The browser test (test_dashboard_browser.py) drives the
page against the real local cluster.
"""

from __future__ import annotations

import itertools
import json
import re
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from endpoints.core import crypto
from endpoints.models import Alert, Cluster, Endpoint, FailoverEvent, HealthCheck, Role, State
from endpoints.web import charts, dashboard

pytestmark = pytest.mark.django_db

PAGE = "/admin/fleet/"
DATA = "/admin/fleet/data.json"


@pytest.fixture
def orders(db: None) -> Cluster:
    """A primary and two replicas in three states, with observed figures."""
    cluster = Cluster.objects.create(name="orders")
    Endpoint.objects.create(
        cluster=cluster,
        name="pg1",
        host="10.1.0.1",
        role=Role.PRIMARY,
        state=State.HEALTHY,
        health_score=97,
        last_latency_ms=1.25,
        in_recovery=False,
    )
    Endpoint.objects.create(
        cluster=cluster,
        name="pg2",
        host="10.1.0.2",
        state=State.DEGRADED,
        health_score=55,
        last_latency_ms=3.5,
        replication_lag_s=12.5,
        replication_lag_bytes=4096,
        in_recovery=True,
    )
    Endpoint.objects.create(
        cluster=cluster,
        name="pg3",
        host="10.1.0.3",
        state=State.DOWN,
        health_score=0,
        consecutive_failures=4,
        last_error="connection refused",
    )
    return cluster


@pytest.fixture
def billing(db: None) -> Cluster:
    cluster = Cluster.objects.create(name="billing")
    Endpoint.objects.create(
        cluster=cluster, name="b1", host="10.2.0.1", role=Role.PRIMARY, state=State.HEALTHY
    )
    Endpoint.objects.create(
        cluster=cluster,
        name="b2",
        host="10.2.0.2",
        state=State.FENCED,
        fenced_reason="old primary after failover",
    )
    return cluster


def tiles(page: str) -> dict[str, dict[str, str]]:
    """Endpoint name -> the tile's state, role and figures, as the page shows them."""
    found = {}
    for match in re.finditer(r'<article class="pgw-tile (.*?)</article>', page, re.S):
        tile = match.group(0)
        attributes = dict(re.findall(r'data-(endpoint|state|role)="([^"]+)"', tile))
        figures = dict(re.findall(r'<dd class="pgw-(score|latency|lag)">([^<]*)</dd>', tile))
        found[attributes["endpoint"]] = {
            **attributes,
            **figures,
            "classes": tile.split('"')[1],
        }
    return found


def section(page: str, cluster: Cluster) -> str:
    match = re.search(
        rf'<section class="pgw-cluster" id="pgw-cluster-{cluster.pk}".*?</section>', page, re.S
    )
    assert match is not None, page
    return match.group(0)


def staff_user(*permissions: str) -> Any:
    user = get_user_model().objects.create_user("staff", password="pw-for-tests", is_staff=True)
    for codename in permissions:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    return user


# Access


def test_anonymous_visitors_are_sent_to_the_admin_login(client: Client) -> None:
    response = client.get(PAGE)
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('admin:login')}?next={PAGE}"
    data = client.get(DATA)
    assert data.status_code == 403
    assert data.json()["login_url"] == reverse("admin:login")


def test_users_who_are_not_staff_get_no_dashboard(client: Client, orders: Cluster) -> None:
    user = get_user_model().objects.create_user("visitor", password="pw-for-tests")
    client.force_login(user)
    response = client.get(PAGE)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))
    assert client.get(DATA).status_code == 403


def test_staff_need_the_view_permissions_of_clusters_and_endpoints(
    client: Client, orders: Cluster
) -> None:
    user = staff_user("view_cluster")
    client.force_login(user)
    assert client.get(PAGE).status_code == 403
    response = client.get(DATA)
    assert response.status_code == 403
    assert "orders" not in response.content.decode()

    user.user_permissions.add(Permission.objects.get(codename="view_endpoint"))
    client.force_login(get_user_model().objects.get(pk=user.pk))  # fresh permission cache
    assert client.get(PAGE).status_code == 200
    assert client.get(DATA).status_code == 200


def test_the_admin_index_links_the_dashboard(admin_client: Client) -> None:
    page = admin_client.get(reverse("admin:index")).content.decode()
    assert f'<a href="{PAGE}"><strong>Fleet dashboard</strong></a>' in page
    assert "Clusters" in page  # still Django's index, with the app list


# The page


def test_every_cluster_and_endpoint_is_a_tile_with_role_state_score_latency_and_lag(
    admin_client: Client, orders: Cluster, billing: Cluster
) -> None:
    response = admin_client.get(PAGE)
    assert response.status_code == 200
    page = response.content.decode()
    # Clusters by name, each endpoint once, the primary first.
    assert page.index('data-cluster="billing"') < page.index('data-cluster="orders"')
    found = tiles(page)
    assert list(found) == ["b1", "b2", "pg1", "pg2", "pg3"]
    assert found["pg1"] == {
        "endpoint": "pg1",
        "state": "healthy",
        "role": "primary",
        "score": "97",
        "latency": "1.2 ms",
        "lag": "—",
        "classes": "pgw-tile pgw-tile-healthy pgw-role-primary",
    }
    assert found["pg2"]["state"] == "degraded"
    assert found["pg2"]["lag"] == "12.5 s, 4096 B"
    assert (found["pg3"]["state"], found["pg3"]["score"]) == ("down", "0")
    # Its last probe failed: no stale figures from the last one that answered.
    assert (found["pg3"]["latency"], found["pg3"]["lag"]) == ("—", "—")
    assert "pgw-tile-down" in found["pg3"]["classes"]
    assert found["b2"]["state"] == "fenced"
    orders_section = section(page, orders)
    # The state badge (the admin's) and colour of each tile.
    assert 'class="pgw-state pgw-state-degraded"' in orders_section
    assert "border-top-color:#c62828" in orders_section  # pg3, down
    assert "connection refused" in orders_section  # why pg3 is down
    assert "4 failed probes in a row" in orders_section
    assert "2 of 3 enabled endpoints available" in orders_section
    pg2_url = reverse("admin:endpoints_endpoint_change", args=[orders.endpoints.get(name="pg2").pk])
    assert f'<a class="pgw-tile-name" href="{pg2_url}">pg2</a>' in orders_section
    assert '<script src="/static/endpoints/fleet.js" defer></script>' in page
    assert f'data-url="{DATA}" data-refresh-s="{dashboard.REFRESH_S}"' in page


def test_the_topology_shows_the_primary_and_what_replicates_from_it(
    admin_client: Client, orders: Cluster, billing: Cluster
) -> None:
    page = admin_client.get(PAGE).content.decode()
    topology = section(page, orders).split('<div class="pgw-topology">', 1)[1].split("</div>")[0]
    assert re.search(r">pg1</span> primary · healthy", topology)
    assert re.search(r'data-replica="pg2">.*>pg2</span> replicates from pg1 · degraded', topology)
    assert "lag 12.5 s, 4096 B" in topology
    assert re.search(r'data-replica="pg3">.*>pg3</span> replicates from pg1 · down', topology)
    fenced = section(page, billing)
    assert re.search(r">b2</span> fenced, not replicating · fenced", fenced)
    assert "Fenced: old primary after failover" in fenced


def test_a_cluster_without_an_enabled_primary_says_so(
    admin_client: Client, orders: Cluster
) -> None:
    orders.endpoints.filter(name="pg1").update(enabled=False)
    page = section(admin_client.get(PAGE).content.decode(), orders)
    assert "no enabled primary" in page
    assert "primary (disabled), disabled" in page


def test_last_failover_and_active_alerts_are_shown_cleared_ones_not(
    admin_client: Client, orders: Cluster, billing: Cluster
) -> None:
    now = timezone.now()
    pg2 = orders.endpoints.get(name="pg2")
    for started, reason in ((now - timedelta(days=3), "an old one"), (now, "primary pg0 down")):
        FailoverEvent.objects.create(
            cluster=orders,
            kind=FailoverEvent.Kind.AUTOMATIC,
            old_primary_name="pg0",
            new_primary_name="pg1",
            reason=reason,
            started_at=started,
            finished_at=started + timedelta(seconds=2),
            outcome=FailoverEvent.Outcome.SUCCEEDED,
        )
    Alert.objects.create(
        cluster=orders,
        endpoint=pg2,
        kind=Alert.Kind.REPLICA_LAG,
        key=f"replica_lag:{pg2.pk}",
        severity=Alert.Severity.WARNING,
        message="pg2 lags 12.5 s behind",
        raised_at=now,
    )
    Alert.objects.create(
        cluster=orders,
        kind=Alert.Kind.PRIMARY_DOWN,
        key="primary_down",
        severity=Alert.Severity.CRITICAL,
        message="pg0 was down, long ago",
        raised_at=now - timedelta(days=3),
        cleared_at=now - timedelta(days=3),
    )
    page = admin_client.get(PAGE).content.decode()
    shown = section(page, orders)
    failover = re.search(
        r'<p class="pgw-last-failover pgw-outcome-succeeded">(.*?)</p>', shown, re.S
    )
    assert failover is not None
    assert "automatic, pg0 → pg1" in failover.group(1)
    assert "primary pg0 down" in failover.group(1)
    assert "an old one" not in shown
    assert re.search(r'class="pgw-alert pgw-severity-warning">.*pg2 lags 12.5 s behind', shown)
    assert "long ago" not in shown  # cleared
    other = section(page, billing)
    assert '<p class="pgw-last-failover">None.</p>' in other
    assert '<p class="pgw-no-alerts">None.</p>' in other


def test_alert_messages_never_show_a_known_password(admin_client: Client, orders: Cluster) -> None:
    secret = "s3cret-dashboard-password"
    crypto.remember(secret)
    Alert.objects.create(
        cluster=orders,
        kind=Alert.Kind.LOW_HEALTH,
        key="low_health",
        severity=Alert.Severity.WARNING,
        message=f"probe failed: password={secret}",
        raised_at=timezone.now(),
    )
    assert secret not in admin_client.get(PAGE).content.decode()
    assert secret not in admin_client.get(DATA).content.decode()


def test_sparklines_of_latency_and_lag_are_the_admin_charts_renderer(
    admin_client: Client, orders: Cluster
) -> None:
    pg2 = orders.endpoints.get(name="pg2")
    now = timezone.now()
    HealthCheck.objects.bulk_create(
        [
            HealthCheck(
                endpoint=pg2,
                checked_at=now - timedelta(seconds=seconds),
                ok=True,
                latency_ms=seconds / 100,
                lag_s=seconds / 1000,
            )
            for seconds in range(1, 601)
        ]
        # Outside the sparklines' window: not drawn, and not in their maximum.
        + [
            HealthCheck(
                endpoint=pg2, checked_at=now - timedelta(hours=2), ok=True, latency_ms=999.0
            )
        ]
    )
    page = section(admin_client.get(PAGE).content.decode(), orders)
    tile = re.search(r'<article [^>]*data-endpoint="pg2".*?</article>', page, re.S)
    assert tile is not None
    charts_in_tile = re.findall(r'<svg class="pgw-chart".*?</svg>', tile.group(0))
    assert len(charts_in_tile) == 2
    latency, lag = charts_in_tile
    assert f'width="{charts.SPARKLINE_WIDTH}" height="{charts.SPARKLINE_HEIGHT}"' in latency
    assert 'aria-label="latency"' in latency
    assert "latency (max 6.0 ms, last 0.0 ms)" in latency
    assert "lag (max 0.6 s, last 0.0 s)" in lag
    [points] = re.findall(r'points="([^"]+)"', latency)
    assert 50 <= len(points.split()) <= charts.SPARKLINE_POINTS  # 600 rows, thinned
    # An endpoint without history gets the same chart saying so.
    pg3 = re.search(r'<article [^>]*data-endpoint="pg3".*?</article>', page, re.S)
    assert pg3 is not None
    assert "latency: no data" in pg3.group(0)
    assert "<script" not in tile.group(0)


def test_an_empty_fleet_says_how_to_add_a_cluster(admin_client: Client) -> None:
    page = admin_client.get(PAGE).content.decode()
    assert "No clusters yet" in page
    assert admin_client.get(DATA).json()["empty_html"].startswith('<p class="pgw-empty">')


# The JSON view


def test_the_json_view_returns_each_clusters_data_and_its_html(
    admin_client: Client, orders: Cluster, billing: Cluster
) -> None:
    response = admin_client.get(DATA)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert "no-cache" in response["Cache-Control"]
    data = response.json()
    assert data["refresh_s"] == dashboard.REFRESH_S
    assert [c["name"] for c in data["clusters"]] == ["billing", "orders"]
    entry = data["clusters"][1]
    assert entry["id"] == orders.pk
    assert entry["dom_id"] == f"pgw-cluster-{orders.pk}"
    assert entry["primary"] == "pg1"
    assert (entry["available"], entry["enabled"]) == (2, 3)
    assert [e["name"] for e in entry["endpoints"]] == ["pg1", "pg2", "pg3"]
    assert entry["endpoints"][1] == {
        "name": "pg2",
        "role": "replica",
        "enabled": True,
        "state": "degraded",
        "health_score": 55,
        "latency_ms": 3.5,
        "lag_s": 12.5,
        "lag_bytes": 4096,
        "in_recovery": True,
        "role_mismatch": False,
        "consecutive_failures": 0,
        "last_checked_at": None,
    }
    assert entry["topology"] == {
        "primary": "pg1",
        "replicas": [
            {"name": "pg2", "replicates_from": "pg1"},
            {"name": "pg3", "replicates_from": "pg1"},
        ],
    }
    assert data["clusters"][0]["topology"]["replicas"] == [{"name": "b2", "replicates_from": None}]
    assert entry["last_failover"] is None
    assert entry["active_alerts"] == []
    # The fragment is the page's section for that cluster, sparklines (SVG) included.
    html = entry["html"]
    assert html.strip().startswith(f'<section class="pgw-cluster" id="{entry["dom_id"]}"')
    assert html.count('<svg class="pgw-chart"') == 6
    assert tiles(html) == tiles(section(admin_client.get(PAGE).content.decode(), orders))
    json.dumps(data)  # plain JSON all the way down


def test_the_page_script_is_served_as_a_static_file(admin_client: Client) -> None:
    response = admin_client.get("/static/endpoints/fleet.js")
    assert response.status_code == 200
    script = b"".join(response.streaming_content).decode()  # type: ignore[attr-defined]
    assert "fetch(url" in script
    assert "replaceChild" in script


# Bounded work: queries and indexes


def add_history(cluster: Cluster, rows_per_endpoint: int) -> None:
    """``rows_per_endpoint`` checks per endpoint, one a second up to now."""
    now = timezone.now()
    HealthCheck.objects.bulk_create(
        (
            HealthCheck(
                endpoint=endpoint,
                checked_at=now - timedelta(seconds=second),
                ok=True,
                latency_ms=1.0,
                lag_s=0.0,
            )
            for endpoint in cluster.endpoints.all()
            for second in range(rows_per_endpoint)
        ),
        batch_size=5000,
    )


def count_queries(client: Client, url: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url).status_code == 200
    return len(queries)


def test_the_number_of_queries_depends_on_neither_history_nor_fleet_size(
    admin_client: Client, orders: Cluster, billing: Cluster, django_assert_max_num_queries: Any
) -> None:
    before = {url: count_queries(admin_client, url) for url in (PAGE, DATA)}
    add_history(orders, 2000)  # more than the sparklines' window and row cap
    for number in range(5):
        cluster = Cluster.objects.create(name=f"more-{number}")
        Endpoint.objects.create(cluster=cluster, name="p", host="10.9.0.1", role=Role.PRIMARY)
        FailoverEvent.objects.create(
            cluster=cluster, kind="manual", reason="test", started_at=timezone.now()
        )
    after = {url: count_queries(admin_client, url) for url in (PAGE, DATA)}
    # Failovers now exist, so their (one) query runs: at most one more, whatever the counts.
    assert after[PAGE] <= before[PAGE] + 1
    assert after[DATA] <= before[DATA] + 1
    # Session, user, clusters, endpoints, last failovers, alerts, history: seven.
    with django_assert_max_num_queries(7):
        admin_client.get(PAGE)
    with django_assert_max_num_queries(7):
        admin_client.get(DATA)


def test_history_queries_search_the_endpoint_time_index_never_scan_the_table(
    admin_client: Client, orders: Cluster
) -> None:
    # The test settings' control database is SQLite, whose plans EXPLAIN QUERY PLAN shows.
    assert connection.vendor == "sqlite"
    add_history(orders, 100)
    pg2 = orders.endpoints.get(name="pg2")
    pages = (PAGE, DATA, reverse("admin:endpoints_endpoint_change", args=[pg2.pk]))
    plans = {}
    for url in pages:
        with CaptureQueriesContext(connection) as queries:
            assert admin_client.get(url).status_code == 200
        for query in queries:
            if "endpoints_healthcheck" in query["sql"]:
                with connection.cursor() as cursor:
                    cursor.execute("EXPLAIN QUERY PLAN " + query["sql"])
                    plans[query["sql"]] = " | ".join(row[-1] for row in cursor.fetchall())
    # The dashboard's sparklines, the admin page's chart and its latest rows.
    assert len(plans) == 4, plans
    for sql, plan in plans.items():
        assert "USING INDEX healthcheck_endpoint_time (endpoint_id=? AND" in plan or (
            "USING INDEX healthcheck_endpoint_time (endpoint_id=?)" in plan
        ), (sql, plan)
        assert "SCAN endpoints_healthcheck" not in plan, (sql, plan)


def test_sparkline_history_is_capped_per_endpoint(orders: Cluster) -> None:
    add_history(orders, 50)
    ids = list(orders.endpoints.values_list("pk", flat=True))
    since = timezone.now() - timedelta(hours=1)
    history = dashboard.recent_history(ids, since, rows=20)
    assert sorted(len(rows) for rows in history.values()) == [20, 20, 20]
    for rows in history.values():
        times = [when for when, *_ in rows]
        assert times == sorted(times)  # oldest first ...
        assert timezone.now() - times[-1] < timedelta(seconds=5)  # ... up to the newest


def test_sparkline_history_is_thinned_by_the_database_keeping_the_newest(orders: Cluster) -> None:
    add_history(orders, 50)
    pg1 = orders.endpoints.get(name="pg1")
    since = timezone.now() - timedelta(hours=1)
    newest = HealthCheck.objects.filter(endpoint=pg1).latest().checked_at
    history = dashboard.recent_history([pg1.pk], since, rows=900, points=10)
    rows = history[pg1.pk]
    assert len(rows) == 10  # every fifth of 50
    assert rows[-1][0] == newest
    gaps = {(later[0] - earlier[0]).total_seconds() for earlier, later in itertools.pairwise(rows)}
    assert gaps == {5.0}
