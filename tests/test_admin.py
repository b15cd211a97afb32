"""endpoints.admin through the real admin views, against the live local cluster."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.messages import get_messages
from django.forms import CheckboxInput
from django.forms import Form as DjangoForm
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from endpoints.devstack.localcluster import LocalPostgresCluster
from endpoints.models import Cluster, Endpoint, FailoverEvent, HealthCheck, Role, State

# Scheduling slack on a loaded machine, well below a second timeout's worth.
MARGIN_S = 1.0  # generous: CI machines have 2 cores and may be busy


@pytest.fixture(autouse=True)
def fast_password_hashing(settings: Any) -> None:
    # admin_client creates a superuser in every test; the default hasher's PBKDF2 rounds
    # cost ~0.4 s each time. Autouse, so it applies before admin_client hashes.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


# Helpers


def _add_form(data: dict[str, Any], form: DjangoForm) -> None:
    for name, field in form.fields.items():
        bound = form[name]
        value = bound.value()
        if isinstance(field.widget, CheckboxInput):
            if value:
                data[bound.html_name] = "on"
        else:
            data[bound.html_name] = "" if value is None else value


def page_data(response: Any) -> dict[str, Any]:
    """What a browser would post back from an admin add/change page, unchanged."""
    assert response.status_code == 200
    data: dict[str, Any] = {}
    _add_form(data, response.context["adminform"].form)
    for inline in response.context["inline_admin_formsets"]:
        _add_form(data, inline.formset.management_form)
        for form in inline.formset.forms:
            _add_form(data, form)
    return data


def inline_prefixes(response: Any) -> dict[str, str]:
    """Endpoint name -> its inline form's prefix on the cluster change page."""
    [inline] = response.context["inline_admin_formsets"]
    return {form.instance.name: form.prefix for form in inline.formset.forms}


def messages_of(response: Any) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def result_names(client: Client, query: str = "") -> list[str]:
    response = client.get(reverse("admin:endpoints_endpoint_changelist") + query)
    assert response.status_code == 200, response  # a bad filter redirects with ?e=1
    return sorted(endpoint.name for endpoint in response.context["cl"].result_list)


def change_url(obj: Endpoint | Cluster) -> str:
    return reverse(f"admin:endpoints_{obj._meta.model_name}_change", args=[obj.pk])


@pytest.fixture
def other_cluster(db: None) -> Cluster:
    cluster = Cluster.objects.create(name="other")
    Endpoint.objects.create(
        cluster=cluster, name="db-a", host="10.1.0.1", role=Role.PRIMARY, state=State.HEALTHY
    )
    Endpoint.objects.create(cluster=cluster, name="db-b", host="10.1.0.2", state=State.DOWN)
    return cluster


@pytest.fixture
def dead_cluster(db: None, closed_port: int, silent_port: int) -> Cluster:
    cluster = Cluster.objects.create(name="dead", connect_timeout_s=1)
    for name, port in (("refused", closed_port), ("hung", silent_port)):
        Endpoint.objects.create(cluster=cluster, name=name, host="127.0.0.1", port=port)
    return cluster


# Changelist


ROW = re.compile(
    r'<th class="field-name"><a href="[^"]+">(?P<name>[^<]+)</a></th>'
    r'<td class="field-cluster[^"]*">(?P<cluster>[^<]+)</td>'
    r'<td class="field-role">(?P<role>[^<]+)</td>'
    r'<td class="field-state_badge"><span class="pgw-state pgw-state-(?P<state>[a-z]+)"'
)


def test_changelist_shows_name_cluster_role_and_state_badge(
    admin_client: Client, local_cluster: Cluster
) -> None:
    local_cluster.endpoints.filter(name="primary").update(state=State.HEALTHY)
    local_cluster.endpoints.filter(name="replica2").update(state=State.DOWN)

    response = admin_client.get(reverse("admin:endpoints_endpoint_changelist"))

    assert response.status_code == 200
    rows = sorted(match.groups() for match in ROW.finditer(response.content.decode()))
    assert rows == [
        ("primary", "local", "primary", "healthy"),
        ("replica1", "local", "replica", "unknown"),
        ("replica2", "local", "replica", "down"),
    ]


def test_changelist_filters_by_cluster_role_and_state(
    admin_client: Client, local_cluster: Cluster, other_cluster: Cluster
) -> None:
    local_cluster.endpoints.filter(name="replica2").update(state=State.DOWN)

    assert result_names(admin_client, f"?cluster__id__exact={other_cluster.pk}") == [
        "db-a",
        "db-b",
    ]
    assert result_names(admin_client, f"?cluster__id__exact={local_cluster.pk}") == [
        "primary",
        "replica1",
        "replica2",
    ]
    assert result_names(admin_client, "?role__exact=primary") == ["db-a", "primary"]
    assert result_names(admin_client, "?state__exact=down") == ["db-b", "replica2"]
    assert result_names(admin_client, "?state__exact=healthy&role__exact=primary") == ["db-a"]


def test_changelist_searches_names_and_hosts(
    admin_client: Client, local_cluster: Cluster, other_cluster: Cluster
) -> None:
    assert result_names(admin_client, "?q=replica") == ["replica1", "replica2"]
    assert result_names(admin_client, "?q=10.1.0.2") == ["db-b"]
    assert result_names(admin_client, "?q=127.0.0.1") == ["primary", "replica1", "replica2"]


# Change pages never show the password


def test_endpoint_change_page_never_shows_the_password(
    admin_client: Client, local_cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    endpoint = local_cluster.endpoints.get(name="primary")

    response = admin_client.get(change_url(endpoint))

    assert response.status_code == 200
    content = response.content.decode()
    assert pg_cluster.password not in content
    assert endpoint.password_encrypted not in content
    assert endpoint.masked_dsn() in content
    assert ":********@127.0.0.1" in content
    assert "Check connection now" in content
    assert reverse("admin:endpoints_endpoint_check_connection", args=[endpoint.pk]) in content


def test_cluster_change_page_with_its_inline_never_shows_the_password(
    admin_client: Client, local_cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    response = admin_client.get(change_url(local_cluster))

    assert response.status_code == 200
    content = response.content.decode()
    assert set(inline_prefixes(response)) == {"primary", "replica1", "replica2"}
    assert pg_cluster.password not in content
    for endpoint in local_cluster.endpoints.all():
        assert endpoint.password_encrypted not in content


# The cluster's assistant roles: write-only passwords


def test_cluster_page_never_shows_the_assistant_passwords(
    admin_client: Client, local_cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    response = admin_client.get(change_url(local_cluster))

    content = response.content.decode()
    assert "Assistant access (MCP server)" in content
    assert 'value="pgwarden_assistant"' in content  # the role's name is shown
    for secret in (pg_cluster.assistant_password, pg_cluster.assistant_write_password):
        assert secret not in content
    for token in (
        local_cluster.assistant_password_encrypted,
        local_cluster.assistant_write_password_encrypted,
    ):
        assert token
        assert token not in content
    assert "(stored; blank keeps it)" in content


def test_cluster_page_keeps_replaces_and_clears_the_assistant_passwords(
    admin_client: Client, local_cluster: Cluster, pg_cluster: LocalPostgresCluster
) -> None:
    data = page_data(admin_client.get(change_url(local_cluster)))
    assert data["assistant_password"] == ""

    kept = admin_client.post(change_url(local_cluster), data)
    assert kept.status_code == 302
    role = Cluster.objects.get(pk=local_cluster.pk).assistant_role()
    assert role is not None
    assert role.password().reveal() == pg_cluster.assistant_password

    replaced = admin_client.post(
        change_url(local_cluster), {**data, "assistant_write_password": "new-writer-Qx12"}
    )
    assert replaced.status_code == 302
    writer = Cluster.objects.get(pk=local_cluster.pk).assistant_role(writes=True)
    assert writer is not None
    assert writer.password().reveal() == "new-writer-Qx12"

    cleared = admin_client.post(change_url(local_cluster), {**data, "assistant_user": ""})
    assert cleared.status_code == 302
    stored = Cluster.objects.get(pk=local_cluster.pk)
    assert stored.assistant_role() is None
    assert stored.assistant_password_encrypted == ""


def test_an_assistant_password_without_a_role_is_a_field_error(
    admin_client: Client, local_cluster: Cluster
) -> None:
    data = page_data(admin_client.get(change_url(local_cluster)))

    response = admin_client.post(
        change_url(local_cluster),
        {**data, "assistant_user": "", "assistant_password": "orphan-Pw77"},
    )

    assert response.status_code == 200
    assert "assistant_user" in response.context["adminform"].form.errors
    assert "orphan-Pw77" not in response.content.decode()


# Adding: invalid data saves nothing


@pytest.fixture
def add_data(admin_client: Client, local_cluster: Cluster) -> dict[str, Any]:
    data = page_data(admin_client.get(reverse("admin:endpoints_endpoint_add")))
    data.update(
        cluster=local_cluster.pk, name="new", host="127.0.0.1", password="typed-password-Lp04"
    )
    return data


def test_adding_a_valid_endpoint_stores_its_password_encrypted(
    admin_client: Client, add_data: dict[str, Any]
) -> None:
    response = admin_client.post(reverse("admin:endpoints_endpoint_add"), add_data)

    assert response.status_code == 302, response.context["adminform"].form.errors
    created = Endpoint.objects.get(name="new")
    assert created.get_password().reveal() == "typed-password-Lp04"
    assert "typed-password-Lp04" not in created.password_encrypted


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"port": 70000}, "port", "Port must be between 1 and 65535."),
        (
            {"pool_min_size": 20, "pool_max_size": 5},
            "pool_min_size",
            "Pool min size (20) cannot exceed pool max size (5).",
        ),
        ({"role": Role.PRIMARY}, "role", "already has an enabled primary, 'primary'"),
    ],
)
def test_adding_invalid_data_shows_field_errors_and_saves_nothing(
    admin_client: Client,
    add_data: dict[str, Any],
    changes: dict[str, Any],
    field: str,
    message: str,
) -> None:
    before = Endpoint.objects.count()

    response = admin_client.post(reverse("admin:endpoints_endpoint_add"), {**add_data, **changes})

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert field in errors
    assert any(message in error for error in errors[field])
    content = response.content.decode()
    assert "Please correct the error" in content
    assert "typed-password-Lp04" not in content  # the typed password is not sent back
    assert Endpoint.objects.count() == before
    assert not Endpoint.objects.filter(name="new").exists()


# Changing the password


@pytest.fixture
def primary_data(admin_client: Client, local_cluster: Cluster) -> tuple[Endpoint, dict[str, Any]]:
    endpoint = local_cluster.endpoints.get(name="primary")
    return endpoint, page_data(admin_client.get(change_url(endpoint)))


def test_saving_with_a_blank_password_keeps_the_stored_one(
    admin_client: Client,
    primary_data: tuple[Endpoint, dict[str, Any]],
    pg_cluster: LocalPostgresCluster,
) -> None:
    endpoint, data = primary_data
    assert data["password"] == ""

    response = admin_client.post(change_url(endpoint), {**data, "weight": 42})

    assert response.status_code == 302
    endpoint.refresh_from_db()
    assert endpoint.weight == 42
    assert endpoint.get_password().reveal() == pg_cluster.password


def test_a_new_password_replaces_the_stored_one(
    admin_client: Client, primary_data: tuple[Endpoint, dict[str, Any]]
) -> None:
    endpoint, data = primary_data

    response = admin_client.post(change_url(endpoint), {**data, "password": "brand-new-Rt61"})

    assert response.status_code == 302
    endpoint.refresh_from_db()
    assert endpoint.get_password().reveal() == "brand-new-Rt61"


def test_remove_password_clears_it(
    admin_client: Client, primary_data: tuple[Endpoint, dict[str, Any]]
) -> None:
    endpoint, data = primary_data

    response = admin_client.post(change_url(endpoint), {**data, "clear_password": "on"})

    assert response.status_code == 302
    endpoint.refresh_from_db()
    assert not endpoint.has_password


def test_a_new_password_and_remove_password_together_are_refused(
    admin_client: Client,
    primary_data: tuple[Endpoint, dict[str, Any]],
    pg_cluster: LocalPostgresCluster,
) -> None:
    endpoint, data = primary_data

    response = admin_client.post(
        change_url(endpoint), {**data, "password": "brand-new-Rt61", "clear_password": "on"}
    )

    assert response.status_code == 200
    assert "clear_password" in response.context["adminform"].form.errors
    endpoint.refresh_from_db()
    assert endpoint.get_password().reveal() == pg_cluster.password


# The cluster page's inline: one enabled primary over the whole formset


def _roles(cluster: Cluster) -> dict[str, str]:
    return dict(cluster.endpoints.values_list("name", "role"))


def test_cluster_page_moves_the_primary_in_one_save(
    admin_client: Client, local_cluster: Cluster
) -> None:
    page = admin_client.get(change_url(local_cluster))
    data, prefix = page_data(page), inline_prefixes(page)
    data[f"{prefix['primary']}-role"] = Role.REPLICA
    data[f"{prefix['replica1']}-role"] = Role.PRIMARY

    response = admin_client.post(change_url(local_cluster), data)

    assert response.status_code == 302
    assert _roles(local_cluster) == {
        "primary": Role.REPLICA,
        "replica1": Role.PRIMARY,
        "replica2": Role.REPLICA,
    }


def test_cluster_page_moving_the_primary_deletes_only_the_endpoint_marked_for_deletion(
    admin_client: Client, local_cluster: Cluster
) -> None:
    page = admin_client.get(change_url(local_cluster))
    data, prefix = page_data(page), inline_prefixes(page)
    data[f"{prefix['primary']}-role"] = Role.REPLICA
    data[f"{prefix['replica1']}-role"] = Role.PRIMARY
    data[f"{prefix['replica2']}-DELETE"] = "on"

    response = admin_client.post(change_url(local_cluster), data)

    assert response.status_code == 302
    assert _roles(local_cluster) == {"primary": Role.REPLICA, "replica1": Role.PRIMARY}


def test_cluster_page_can_add_the_new_primary_while_demoting_the_old(
    admin_client: Client, local_cluster: Cluster
) -> None:
    page = admin_client.get(change_url(local_cluster))
    data, prefix = page_data(page), inline_prefixes(page)
    data[f"{prefix['primary']}-role"] = Role.REPLICA
    new = "endpoints-3"
    data.update(
        {
            "endpoints-TOTAL_FORMS": 4,
            f"{new}-cluster": local_cluster.pk,
            f"{new}-name": "fresh",
            f"{new}-role": Role.PRIMARY,
            f"{new}-host": "10.9.9.9",
            f"{new}-port": 5432,
            f"{new}-dbname": "app",
            f"{new}-user": "app",
            f"{new}-sslmode": "prefer",
            f"{new}-weight": 100,
            f"{new}-enabled": "on",
            f"{new}-promotion_priority": 0,
        }
    )

    response = admin_client.post(change_url(local_cluster), data)

    assert response.status_code == 302
    assert _roles(local_cluster)["fresh"] == Role.PRIMARY
    assert _roles(local_cluster)["primary"] == Role.REPLICA


def test_cluster_page_refuses_two_primaries_with_a_clear_error(
    admin_client: Client, local_cluster: Cluster
) -> None:
    page = admin_client.get(change_url(local_cluster))
    data, prefix = page_data(page), inline_prefixes(page)
    data[f"{prefix['replica1']}-role"] = Role.PRIMARY

    response = admin_client.post(change_url(local_cluster), data)

    assert response.status_code == 200
    [inline] = response.context["inline_admin_formsets"]
    [error] = inline.formset.non_form_errors()
    assert "at most one enabled primary" in error
    assert "'primary'" in error
    assert "'replica1'" in error
    assert "at most one enabled primary" in response.content.decode()
    assert _roles(local_cluster) == {
        "primary": Role.PRIMARY,
        "replica1": Role.REPLICA,
        "replica2": Role.REPLICA,
    }


# Checking connections


def test_check_connection_action_reports_versions_and_recovery(
    admin_client: Client, local_cluster: Cluster
) -> None:
    ids = list(local_cluster.endpoints.values_list("pk", flat=True))

    response = admin_client.post(
        reverse("admin:endpoints_endpoint_changelist"),
        {"action": "check_connection_now", "_selected_action": ids},
    )

    assert response.status_code == 302
    reports = {message.split(":", 1)[0]: message for message in messages_of(response)}
    assert set(reports) == {"local/primary", "local/replica1", "local/replica2"}
    for name, report in reports.items():
        assert f"{name}: connected. PostgreSQL 15" in report
        if name == "local/primary":
            assert "not in recovery (primary)" in report
        else:
            assert "in recovery (replica)" in report
            assert "not in recovery" not in report


def test_check_connection_action_reports_dead_and_hung_endpoints_within_the_timeout(
    admin_client: Client, dead_cluster: Cluster, closed_port: int, silent_port: int
) -> None:
    ids = list(dead_cluster.endpoints.values_list("pk", flat=True))

    started = time.monotonic()
    response = admin_client.post(
        reverse("admin:endpoints_endpoint_changelist"),
        {"action": "check_connection_now", "_selected_action": ids},
    )
    elapsed = time.monotonic() - started

    assert response.status_code == 302
    reports = {message.split(":", 1)[0]: message for message in messages_of(response)}
    assert reports["dead/refused"].startswith("dead/refused: connection failed:")
    assert f"port {closed_port} failed: Connection refused" in reports["dead/refused"]
    assert reports["dead/hung"] == (
        f"dead/hung: connection failed: no answer from 127.0.0.1:{silent_port} within 1 s "
        "(host down, hung, or a firewall dropping packets)"
    )
    assert elapsed < 1 + MARGIN_S


def test_check_connection_button_checks_one_endpoint(
    admin_client: Client, local_cluster: Cluster
) -> None:
    replica = local_cluster.endpoints.get(name="replica1")
    url = reverse("admin:endpoints_endpoint_check_connection", args=[replica.pk])

    response = admin_client.post(url)

    assert response.status_code == 302
    assert response["Location"] == change_url(replica)
    [report] = messages_of(response)
    assert report.startswith("local/replica1: connected. PostgreSQL 15")
    assert "in recovery (replica)" in report


def test_check_connection_button_reports_a_hung_endpoint(
    admin_client: Client, dead_cluster: Cluster, silent_port: int
) -> None:
    hung = dead_cluster.endpoints.get(name="hung")

    started = time.monotonic()
    response = admin_client.post(
        reverse("admin:endpoints_endpoint_check_connection", args=[hung.pk])
    )
    elapsed = time.monotonic() - started

    [report] = messages_of(response)
    assert f"no answer from 127.0.0.1:{silent_port} within 1 s" in report
    assert elapsed < 1 + MARGIN_S


def test_check_connection_button_does_nothing_on_get(
    admin_client: Client, local_cluster: Cluster
) -> None:
    primary = local_cluster.endpoints.get(name="primary")

    response = admin_client.get(
        reverse("admin:endpoints_endpoint_check_connection", args=[primary.pk])
    )

    assert response.status_code == 302
    assert messages_of(response) == []


def test_check_connection_button_requires_login(client: Client, local_cluster: Cluster) -> None:
    primary = local_cluster.endpoints.get(name="primary")

    response = client.post(reverse("admin:endpoints_endpoint_check_connection", args=[primary.pk]))

    assert response.status_code == 302
    assert reverse("admin:login") in response["Location"]
    assert messages_of(response) == []


# Audit trails are read-only


@pytest.fixture
def audit_rows(local_cluster: Cluster) -> dict[str, Any]:
    primary = local_cluster.endpoints.get(name="primary")
    now = timezone.now()
    return {
        "healthcheck": HealthCheck.objects.create(
            endpoint=primary, checked_at=now, ok=True, latency_ms=1.5, score=100
        ),
        "failoverevent": FailoverEvent.objects.create(
            cluster=local_cluster,
            kind=FailoverEvent.Kind.MANUAL,
            old_primary=primary,
            old_primary_name="primary",
            reason="test",
            started_at=now,
            steps=[{"at": now.isoformat(), "step": "fence old primary", "ok": True}],
        ),
    }


@pytest.mark.parametrize("model", ["healthcheck", "failoverevent"])
def test_audit_admins_are_read_only(
    admin_client: Client, audit_rows: dict[str, Any], model: str
) -> None:
    row = audit_rows[model]
    change = reverse(f"admin:endpoints_{model}_change", args=[row.pk])

    changelist = admin_client.get(reverse(f"admin:endpoints_{model}_changelist"))
    assert changelist.status_code == 200
    assert reverse(f"admin:endpoints_{model}_add") not in changelist.content.decode()
    assert "delete_selected" not in changelist.content.decode()

    page = admin_client.get(change)
    assert page.status_code == 200
    assert 'name="_save"' not in page.content.decode()
    assert 'name="_continue"' not in page.content.decode()

    assert admin_client.get(reverse(f"admin:endpoints_{model}_add")).status_code == 403
    assert admin_client.post(change, {"reason": "edited"}).status_code == 403
    delete = reverse(f"admin:endpoints_{model}_delete", args=[row.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    assert type(row).objects.filter(pk=row.pk).exists()


def test_failover_event_page_shows_its_steps(
    admin_client: Client, audit_rows: dict[str, Any]
) -> None:
    event = audit_rows["failoverevent"]

    response = admin_client.get(reverse("admin:endpoints_failoverevent_change", args=[event.pk]))

    assert "fence old primary" in response.content.decode()


# History charts, topology, alerts, check now


def test_endpoint_page_charts_the_last_hour_of_latency_lag_and_answers(
    admin_client: Client, other_cluster: Cluster
) -> None:
    endpoint = other_cluster.endpoints.get(name="db-b")
    now = timezone.now()
    HealthCheck.objects.bulk_create(
        [
            HealthCheck(
                endpoint=endpoint,
                checked_at=now - timedelta(minutes=minutes),
                ok=minutes % 10 != 0,
                latency_ms=float(minutes),
                lag_s=minutes / 10,
            )
            for minutes in range(1, 50)
        ]
        + [HealthCheck(endpoint=endpoint, checked_at=now - timedelta(hours=3), ok=True)]
    )
    page = admin_client.get(change_url(endpoint)).content.decode()
    [latency] = re.findall(r'aria-label="latency"><rect[^>]*/><polyline[^>]*points="([^"]+)"', page)
    assert len(latency.split()) == 49  # the row from three hours ago is outside the window
    assert "latency (max 49.0 ms, last 1.0 ms)" in page
    assert "replication lag (max 4.9 s, last 0.1 s)" in page
    timeline = re.search(r'<svg class="pgw-timeline".*?</svg>', page)
    assert timeline is not None
    assert timeline.group(0).count('fill="#c62828"') == 4  # minutes 10, 20, 30, 40 failed
    assert "<script" not in timeline.group(0)


def test_cluster_page_shows_topology_alerts_and_failover_history(
    admin_client: Client, other_cluster: Cluster
) -> None:
    from endpoints.alerts import notify_event, raise_alert
    from endpoints.models import Alert

    raise_alert(other_cluster, Alert.Kind.PRIMARY_DOWN, "primary_down", "critical", "db-a is down")
    notify_event(other_cluster, Alert.Kind.FAILOVER, "info", "an old event, already over")
    page = admin_client.get(change_url(other_cluster)).content.decode()
    topology = re.search(r'<table class="pgw-topology">.*?</table>', page, re.S)
    assert topology is not None
    assert "<td>db-b</td><td>replica</td>" in topology.group(0)
    assert "replicates from db-a" in topology.group(0)
    alerts = re.search(r'<table class="pgw-alerts">.*?</table>', page, re.S)
    assert alerts is not None
    assert "db-a is down" in alerts.group(0)
    assert "an old event" not in alerts.group(0)  # only active alerts
    assert "Failover…" in page
    assert "Switchover…" in page
    alert_list = admin_client.get(reverse("admin:endpoints_alert_changelist")).content.decode()
    assert "db-a is down" in alert_list
    assert "an old event, already over" in alert_list


@pytest.mark.django_db(transaction=True)
def test_check_now_button_sweeps_the_cluster_and_reports_each_endpoint(
    admin_client: Client, local_cluster: Cluster, redis_server: Any
) -> None:
    url = reverse("admin:endpoints_cluster_check_now", args=[local_cluster.pk])
    response = admin_client.post(url, follow=True)
    assert response.status_code == 200
    reported = messages_of(response)
    assert len(reported) == 3
    assert all("connected" in message for message in reported)
    assert HealthCheck.objects.filter(endpoint__cluster=local_cluster).count() == 3
    assert admin_client.get(url).status_code == 302  # GET changes nothing
    assert HealthCheck.objects.filter(endpoint__cluster=local_cluster).count() == 3


@pytest.mark.django_db(transaction=True)
def test_check_now_never_overlaps_a_running_sweep(
    admin_client: Client, local_cluster: Cluster, redis_server: Any
) -> None:
    from endpoints.health import sweep_lock

    lock = sweep_lock(local_cluster)
    assert lock.acquire()  # a scheduled sweep is running
    try:
        url = reverse("admin:endpoints_cluster_check_now", args=[local_cluster.pk])
        response = admin_client.post(url, follow=True)
    finally:
        lock.release()

    assert messages_of(response) == ["No check now: another sweep of this cluster is running."]
    assert not HealthCheck.objects.filter(endpoint__cluster=local_cluster).exists()


# Failover and switchover from the cluster page


@pytest.mark.django_db(transaction=True)
def test_failover_page_shows_the_plan_before_anything_happens(
    admin_client: Client, local_cluster: Cluster, redis_server: Any
) -> None:
    url = reverse("admin:endpoints_cluster_failover", args=[local_cluster.pk])
    page = admin_client.get(url).content.decode()
    assert re.search(r"Promote <strong>replica[12]</strong>", page)
    assert "The candidate is promoted" in page
    assert 'value="Yes, fail over to replica' in page
    switchover = admin_client.get(url + "?switchover=1").content.decode()
    assert "The current primary refuses new writes" in switchover
    # Only showing the plan changed nothing.
    assert FailoverEvent.objects.count() == 0
    assert local_cluster.endpoints.get(role=Role.PRIMARY).name == "primary"

    response = admin_client.get(url + "?to=nope", follow=True)
    assert any("nope" in message for message in messages_of(response))


@pytest.mark.django_db(transaction=True)
def test_a_failover_with_no_candidate_is_aborted_and_shown(
    admin_client: Client, closed_port: int, redis_server: Any
) -> None:
    cluster = Cluster.objects.create(name="gone", connect_timeout_s=1, probe_timeout_s=1)
    Endpoint.objects.create(
        cluster=cluster, name="p", host="127.0.0.1", port=closed_port, role=Role.PRIMARY
    )
    Endpoint.objects.create(cluster=cluster, name="r", host="127.0.0.1", port=closed_port)
    url = reverse("admin:endpoints_cluster_failover", args=[cluster.pk])
    response = admin_client.post(url, follow=True)
    [event] = FailoverEvent.objects.filter(cluster=cluster)
    assert event.outcome == FailoverEvent.Outcome.ABORTED
    assert response.request["PATH_INFO"] == reverse(
        "admin:endpoints_failoverevent_change", args=[event.pk]
    )
    assert any("Aborted" in message for message in messages_of(response))
    assert cluster.endpoints.get(name="p").role == Role.PRIMARY  # nothing was promoted


HOSTILE = "<script>alert(1)</script>"


def test_markup_in_names_messages_and_steps_is_shown_as_text(
    admin_client: Client, other_cluster: Cluster
) -> None:
    from endpoints.models import Alert

    # Written around validation (a slug field would refuse it), as a bad import might.
    hostile = Endpoint.objects.create(cluster=other_cluster, name=HOSTILE, host="10.1.0.9")
    now = timezone.now()
    HealthCheck.objects.create(endpoint=hostile, checked_at=now, ok=False, error=HOSTILE)
    Alert.objects.create(
        cluster=other_cluster,
        kind=Alert.Kind.PRIMARY_DOWN,
        key="primary_down",
        severity=Alert.Severity.CRITICAL,
        message=HOSTILE,
        raised_at=now,
    )
    event = FailoverEvent.objects.create(
        cluster=other_cluster,
        kind=FailoverEvent.Kind.MANUAL,
        old_primary=hostile,
        old_primary_name=HOSTILE,
        reason="test",
        started_at=now,
        steps=[{"at": now.isoformat(), "step": "promote", "ok": False, "detail": HOSTILE}],
    )
    pages = {
        "cluster": change_url(other_cluster),
        "endpoint": change_url(hostile),
        "failover event": reverse("admin:endpoints_failoverevent_change", args=[event.pk]),
    }
    for page, url in pages.items():
        html = admin_client.get(url).content.decode()
        assert HOSTILE not in html, page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, page
    cluster_page = admin_client.get(pages["cluster"]).content.decode()
    for table in ("pgw-topology", "pgw-alerts", "pgw-failovers"):
        found = re.search(rf'<table class="{table}">.*?</table>', cluster_page, re.S)
        assert found is not None, table
        assert "&lt;script&gt;" in found.group(0), table
    endpoint_page = admin_client.get(pages["endpoint"]).content.decode()
    history = re.search(r'<table class="pgw-history">.*?</table>', endpoint_page, re.S)
    assert history is not None
    assert "&lt;script&gt;" in history.group(0)
    steps_page = admin_client.get(pages["failover event"]).content.decode()
    steps = re.search(r'<table class="pgw-steps">.*?</table>', steps_page, re.S)
    assert steps is not None
    assert "<td>promote</td><td>failed</td><td>&lt;script&gt;" in steps.group(0)
