"""endpoints.alerts: conditions, once-per-state-change firing, and delivery.

Delivery goes to real receivers: a local HTTP server that records the webhook's POST
bodies, and Django's locmem email backend (its own test backend) for ``mail_admins``.
"""

from __future__ import annotations

import http.server
import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.core import mail
from django.core.exceptions import ImproperlyConfigured

from endpoints.alerts import (
    clear_alert,
    conditions,
    deliver,
    evaluate,
    is_evaluated_key,
    notify_event,
    raise_alert,
    wait_for_deliveries,
)
from endpoints.control import sweep
from endpoints.core.observations import Observation, ProbeResult
from endpoints.core.waiting import poll_until
from endpoints.models import Alert, Cluster, Endpoint, Role, State
from project import env
from project.env import InvalidValue, parse_email_addresses, parse_email_url, parse_webhook_url


class Receiver(http.server.ThreadingHTTPServer):
    """A webhook receiver on 127.0.0.1 that keeps every JSON body POSTed to it."""

    def __init__(self, status: int = 204) -> None:
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)
        self.status = status
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.content_types: list[str] = []
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks/secret-token-123"

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        poll_until(lambda: len(self.bodies) >= count, timeout_s=timeout_s, interval_s=0.02)
        return self.bodies

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _ReceiverHandler(http.server.BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.server.bodies.append(json.loads(self.rfile.read(length)))
        self.server.paths.append(self.path)
        self.server.content_types.append(self.headers.get("Content-Type", ""))
        self.send_response(self.server.status)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output quiet


@pytest.fixture
def receiver(settings: Any) -> Iterator[Receiver]:
    server = Receiver()
    settings.PGWARDEN_ALERT_WEBHOOK_URL = server.url
    yield server
    wait_for_deliveries()
    server.close()


@pytest.fixture
def pgwarden_logs(pgwarden_logs: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """conftest's pgwarden_logs, down to DEBUG (delivery logs its attempts there)."""
    pgwarden_logs.set_level(logging.DEBUG, logger="pgwarden")
    return pgwarden_logs


# Conditions, from plain observations


def make_cluster(**fields: Any) -> Cluster:
    values: dict[str, Any] = {"pk": 1, "name": "c", "failure_threshold": 3}
    values.update(fields)
    return Cluster(**values)


def observation(
    cluster: Cluster,
    pk: int,
    *,
    role: str = Role.REPLICA,
    ok: bool = True,
    state: str = State.HEALTHY,
    score: int = 100,
    latency_ms: float = 2.0,
    lag_s: float | None = 0.0,
    in_recovery: bool | None = None,
    failures: int = 0,
    role_mismatch: bool = False,
) -> Observation:
    endpoint = Endpoint(pk=pk, cluster=cluster, name=f"e{pk}", role=role)
    if in_recovery is None:
        in_recovery = role == Role.REPLICA
    result = (
        ProbeResult(
            ok=True,
            latency_ms=latency_ms,
            in_recovery=in_recovery,
            replay_lag_s=lag_s if in_recovery else None,
        )
        if ok
        else ProbeResult(ok=False, error="connection refused")
    )
    return Observation(
        endpoint,
        result,
        None,
        state=state,
        score=score if ok else 0,
        consecutive_failures=0 if ok else failures,
        role_mismatch=role_mismatch,
    )


def keys(cluster: Cluster, observations: list[Observation]) -> dict[str, str]:
    return {c.key: c.severity for c in conditions(cluster, observations)}


def test_a_healthy_cluster_has_no_condition() -> None:
    cluster = make_cluster()
    healthy = [observation(cluster, 1, role=Role.PRIMARY), observation(cluster, 2)]
    assert conditions(cluster, healthy) == []
    assert conditions(cluster, []) == []


@pytest.mark.parametrize(
    ("available", "total", "expected"),
    [(2, 4, None), (1, 4, "warning"), (0, 4, "critical"), (1, 2, None), (2, 5, "warning")],
)
def test_low_availability_below_the_minimum_share(
    available: int, total: int, expected: str | None
) -> None:
    cluster = make_cluster(alert_min_available_pct=50, alert_min_health_score=0)
    observations = [
        observation(cluster, pk, ok=pk <= available, failures=1) for pk in range(1, total + 1)
    ]
    assert keys(cluster, observations).get("low_availability") == expected


def test_a_fenced_endpoint_is_not_available_even_when_it_answers() -> None:
    cluster = make_cluster(alert_min_available_pct=60, alert_min_health_score=0)
    observations = [
        observation(cluster, 1, role=Role.PRIMARY),
        observation(cluster, 2, state=State.FENCED),
    ]
    [condition] = conditions(cluster, observations)
    assert condition.key == "low_availability"
    assert "1 of 2 enabled endpoints available (50%, under the 60% minimum)" in condition.message
    assert "not available: e2" in condition.message


def test_a_large_cluster_s_messages_name_a_few_endpoints_and_count_the_rest() -> None:
    cluster = make_cluster(alert_min_available_pct=50, alert_min_health_score=70)
    observations = [observation(cluster, pk, ok=pk > 400, failures=1) for pk in range(1, 501)]
    found = {c.key: c.message for c in conditions(cluster, observations)}
    assert found["low_availability"].endswith(
        "not available: e1, e2, e3, e4, e5, e6, e7, e8, e9, e10 and 390 more"
    )
    assert "(lowest: e1 0, e10 0, e100 0, " in found["low_health"]
    assert found["low_health"].endswith(" and 490 more)")


def test_slow_average_response_counts_the_endpoints_that_answered() -> None:
    cluster = make_cluster(alert_max_response_ms=1000, alert_min_health_score=0)
    slow = [observation(cluster, 1, latency_ms=1500.0), observation(cluster, 2, latency_ms=600.0)]
    assert "slow_response" in keys(cluster, slow)
    fine = [observation(cluster, 1, latency_ms=1500.0), observation(cluster, 2, latency_ms=400.0)]
    assert "slow_response" not in keys(cluster, fine)
    down = [observation(cluster, 1, ok=False), observation(cluster, 2, latency_ms=10.0)]
    assert "slow_response" not in keys(cluster, down)


def test_low_average_health_score_counts_a_silent_endpoint_as_zero() -> None:
    cluster = make_cluster(alert_min_health_score=70, alert_min_available_pct=0)
    two_of_three = [observation(cluster, pk, ok=pk != 3) for pk in (1, 2, 3)]
    [condition] = conditions(cluster, two_of_three)
    assert condition.key == "low_health"
    assert "average health score 67 under the minimum 70 (lowest: e3 0, e1 100, e2 100)" in (
        condition.message
    )
    assert conditions(cluster, [observation(cluster, 1, score=70)]) == []


def test_primary_down_from_the_failure_threshold_with_the_next_step() -> None:
    cluster = make_cluster(failure_threshold=3, alert_min_available_pct=0, alert_min_health_score=0)
    for failures, expected in [(2, False), (3, True), (9, True)]:
        found = keys(
            cluster, [observation(cluster, 1, role=Role.PRIMARY, ok=False, failures=failures)]
        )
        assert ("primary_down" in found) is expected
    [condition] = conditions(
        cluster, [observation(cluster, 1, role=Role.PRIMARY, ok=False, failures=3)]
    )
    assert condition.severity == "critical"
    assert "primary e1 failed 3 consecutive probes (connection refused)" in condition.message
    assert "automatic failover is starting" in condition.message
    manual = make_cluster(auto_failover=False, alert_min_available_pct=0, alert_min_health_score=0)
    [condition] = conditions(
        manual, [observation(manual, 1, role=Role.PRIMARY, ok=False, failures=3)]
    )
    assert "run `manage.py failover c`" in condition.message


def test_replica_lag_over_the_bound_per_replica() -> None:
    cluster = make_cluster(max_replica_lag_s=10.0)
    observations = [
        observation(cluster, 1, role=Role.PRIMARY),
        observation(cluster, 2, lag_s=12.5),
        observation(cluster, 3, lag_s=10.0),
        observation(cluster, 4, lag_s=None),
    ]
    [condition] = conditions(cluster, observations)
    assert (condition.key, condition.severity) == ("replica_lag:2", "warning")
    assert condition.endpoint is observations[1].endpoint
    assert "replica e2 lags 12.5 s behind the primary, over the 10 s bound" in condition.message
    unbounded = make_cluster(max_replica_lag_s=None)
    assert conditions(unbounded, [observation(unbounded, 2, lag_s=1e6)]) == []


def test_role_mismatch_per_endpoint_in_both_directions() -> None:
    cluster = make_cluster()
    observations = [
        observation(cluster, 1, role=Role.PRIMARY, in_recovery=True, role_mismatch=True),
        observation(cluster, 2, role=Role.REPLICA, in_recovery=False, role_mismatch=True),
    ]
    found = {c.key: c for c in conditions(cluster, observations)}
    assert set(found) == {"role_mismatch:1", "role_mismatch:2"}
    assert "registered as primary but in recovery" in found["role_mismatch:1"].message
    assert "registered as a replica but not in recovery" in found["role_mismatch:2"].message
    assert {c.severity for c in found.values()} == {"critical"}


def test_a_fenced_writable_endpoint_is_split_brain_not_a_role_mismatch() -> None:
    cluster = make_cluster(alert_min_available_pct=0, alert_min_health_score=0)
    fenced = observation(cluster, 7, state=State.FENCED, in_recovery=False, role_mismatch=True)
    assert keys(cluster, [fenced]) == {"split_brain:7": "critical"}
    in_recovery = observation(cluster, 7, state=State.FENCED, in_recovery=True)
    assert keys(cluster, [in_recovery]) == {}


def test_evaluate_owns_only_its_own_keys() -> None:
    for key in ("low_availability", "slow_response", "low_health", "primary_down"):
        assert is_evaluated_key(key)
    for key in ("replica_lag:3", "role_mismatch:3", "split_brain:3"):
        assert is_evaluated_key(key)
    for key in ("failover_aborted", "event:failover:2025-01-01", "custom"):
        assert not is_evaluated_key(key)


# Firing once, clearing, against real sweeps


@pytest.mark.django_db(transaction=True)
def test_a_condition_persisting_over_ten_sweeps_fires_once_and_clears_when_it_ends(
    local_cluster: Cluster, closed_port: int, receiver: Receiver, settings: Any, mailoutbox: list
) -> None:
    settings.ADMINS = [("dba@example.com", "dba@example.com")]
    Cluster.objects.filter(pk=local_cluster.pk).update(
        failure_threshold=1, alert_min_available_pct=70, auto_failover=False
    )
    local_cluster.refresh_from_db()
    replica = Endpoint.objects.get(cluster=local_cluster, name="replica1")
    port = replica.port
    Endpoint.objects.filter(pk=replica.pk).update(port=closed_port)

    for _ in range(10):
        sweep(local_cluster)

    active = Alert.objects.filter(cluster=local_cluster, cleared_at__isnull=True)
    assert sorted(active.values_list("key", flat=True)) == ["low_availability", "low_health"]
    assert Alert.objects.filter(cluster=local_cluster).count() == 2
    assert wait_for_deliveries()
    bodies = receiver.wait_for(2)
    assert sorted((b["key"], b["status"]) for b in bodies) == [
        ("low_availability", "raised"),
        ("low_health", "raised"),
    ]
    assert len(mailoutbox) == 2

    Endpoint.objects.filter(pk=replica.pk).update(port=port)
    sweep(local_cluster)
    sweep(local_cluster)

    assert not Alert.objects.filter(cluster=local_cluster, cleared_at__isnull=True).exists()
    assert Alert.objects.filter(cluster=local_cluster).count() == 2
    assert wait_for_deliveries()
    bodies = receiver.wait_for(4)
    assert sorted((b["key"], b["status"]) for b in bodies[2:]) == [
        ("low_availability", "cleared"),
        ("low_health", "cleared"),
    ]
    assert len(mailoutbox) == 4
    assert len(receiver.bodies) == 4

    # It comes back: a new alert, so the history shows both episodes.
    Endpoint.objects.filter(pk=replica.pk).update(port=closed_port)
    sweep(local_cluster)
    assert Alert.objects.filter(cluster=local_cluster, key="low_health").count() == 2


@pytest.mark.django_db
def test_evaluate_leaves_alerts_it_does_not_own_alone() -> None:
    cluster = Cluster.objects.create(name="c")
    raise_alert(cluster, Alert.Kind.FAILOVER, "failover_aborted", "critical", "no candidate")
    raise_alert(cluster, Alert.Kind.LOW_HEALTH, "low_health", "warning", "average 10")

    evaluation = evaluate(cluster, [])

    assert [a.key for a in evaluation.cleared] == ["low_health"]
    assert evaluation.raised == []
    assert Alert.objects.get(key="failover_aborted").active


# Delivery


@pytest.mark.django_db
@pytest.mark.processes
def test_the_webhook_receives_the_alert_as_json(receiver: Receiver) -> None:
    cluster = Cluster.objects.create(name="web")
    endpoint = Endpoint.objects.create(cluster=cluster, name="pg1", host="10.0.0.1")

    raised = raise_alert(
        cluster,
        Alert.Kind.PRIMARY_DOWN,
        "primary_down",
        "critical",
        "pg1 is down",
        endpoint=endpoint,
    )
    assert raised is not None
    clear_alert(cluster, "primary_down")
    notify_event(cluster, Alert.Kind.FAILOVER, "info", "failover succeeded")

    assert wait_for_deliveries()
    first, second, third = receiver.wait_for(3)
    assert first == {
        "id": raised.pk,
        "status": "raised",
        "cluster": "web",
        "endpoint": "pg1",
        "kind": "primary_down",
        "key": "primary_down",
        "severity": "critical",
        "message": "pg1 is down",
        "raised_at": raised.raised_at.isoformat(),
        "cleared_at": None,
    }
    assert (second["status"], second["cleared_at"] is not None) == ("cleared", True)
    assert (third["status"], third["kind"], third["endpoint"]) == ("event", "failover", None)
    assert receiver.paths == ["/hooks/secret-token-123"] * 3
    assert set(receiver.content_types) == {"application/json"}


@pytest.mark.django_db
@pytest.mark.processes
def test_webhook_deliveries_arrive_in_the_order_alerts_were_raised_and_cleared(
    receiver: Receiver,
) -> None:
    cluster = Cluster.objects.create(name="flap")
    for _ in range(10):
        raise_alert(cluster, Alert.Kind.LOW_HEALTH, "low_health", "warning", "average 60")
        clear_alert(cluster, "low_health")

    assert wait_for_deliveries()
    assert [body["status"] for body in receiver.wait_for(20)] == ["raised", "cleared"] * 10


@pytest.mark.django_db
def test_a_webhook_that_hangs_never_blocks_and_its_failure_is_logged_without_the_token(
    settings: Any, silent_port: int, pgwarden_logs: pytest.LogCaptureFixture
) -> None:
    settings.PGWARDEN_ALERT_WEBHOOK_URL = f"http://127.0.0.1:{silent_port}/hook/secret-token-456"
    cluster = Cluster.objects.create(name="hang")

    started = time.monotonic()
    raise_alert(cluster, Alert.Kind.LOW_HEALTH, "low_health", "warning", "average 10")
    assert time.monotonic() - started < 0.5  # the sweep goes on at once

    assert wait_for_deliveries(timeout_s=10)
    errors = [r.getMessage() for r in pgwarden_logs.records if r.levelno == logging.ERROR]
    assert any(f"alert webhook at 127.0.0.1:{silent_port} failed" in e for e in errors), errors
    assert not any("secret-token-456" in e for e in errors)


@pytest.mark.django_db
@pytest.mark.parametrize("status", [404, 500])
@pytest.mark.processes
def test_a_webhook_error_status_is_logged(
    receiver: Receiver, pgwarden_logs: pytest.LogCaptureFixture, status: int
) -> None:
    receiver.status = status
    cluster = Cluster.objects.create(name="err")

    notify_event(cluster, Alert.Kind.FAILOVER, "warning", "failover aborted")

    assert wait_for_deliveries()
    errors = [r.getMessage() for r in pgwarden_logs.records if r.levelno == logging.ERROR]
    assert any(f"answered HTTP {status}" in e for e in errors), errors


class RequestLog(http.server.ThreadingHTTPServer):
    """A server on 127.0.0.1 that notes every request (any method) and answers ``status``.

    With ``location`` set, the answer carries that ``Location`` header: a redirect.
    """

    def __init__(self, status: int = 204, location: str | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _RequestLogHandler)
        self.status = status
        self.location = location
        self.requests: list[tuple[str, str]] = []
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    @property
    def where(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _RequestLogHandler(http.server.BaseHTTPRequestHandler):
    server: RequestLog

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.requests.append((self.command, self.path))
        self.send_response(self.server.status)
        if self.server.location:
            self.send_header("Location", self.server.location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_PUT = do_HEAD = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output quiet


@pytest.mark.django_db
@pytest.mark.parametrize("status", [307, 302, 301, 303, 308])
@pytest.mark.processes
def test_a_webhook_redirect_is_not_followed_and_is_logged_without_the_token(
    settings: Any, pgwarden_logs: pytest.LogCaptureFixture, status: int
) -> None:
    final = RequestLog()
    first = RequestLog(status, location=f"http://{final.where}/hooks/final-token-789")
    settings.PGWARDEN_ALERT_WEBHOOK_URL = f"http://{first.where}/hooks/secret-token-789"
    cluster = Cluster.objects.create(name="moved")
    try:
        alert = notify_event(cluster, Alert.Kind.FAILOVER, "critical", "failover failed")
        assert wait_for_deliveries()
    finally:
        first.close()
        final.close()

    assert first.requests == [("POST", "/hooks/secret-token-789")]
    assert final.requests == []  # neither the POST nor a bodiless GET went on
    errors = [r.getMessage() for r in pgwarden_logs.records if r.levelno == logging.ERROR]
    assert errors == [
        f"alert webhook at {first.where} answered HTTP {status} (a redirect, not followed: "
        f"set PGWARDEN_ALERT_WEBHOOK_URL to the final address) to alert {alert.pk}"
    ]


@pytest.mark.django_db
def test_mail_admins_delivers_when_admins_are_configured(settings: Any, mailoutbox: list) -> None:
    cluster = Cluster.objects.create(name="mail")
    settings.ADMINS = []
    raise_alert(cluster, Alert.Kind.LOW_HEALTH, "low_health", "warning", "no one is told")
    assert wait_for_deliveries()
    assert mailoutbox == []

    settings.ADMINS = [("dba@example.com", "dba@example.com")]
    raise_alert(cluster, Alert.Kind.PRIMARY_DOWN, "primary_down", "critical", "pg1 is down")
    assert wait_for_deliveries()

    [message] = mailoutbox
    assert message.to == ["dba@example.com"]
    assert message.subject == "[pgwarden] raised critical [mail] primary_down"
    assert message.body.startswith("pg1 is down\n")
    assert "key: primary_down" in message.body


@pytest.mark.django_db
def test_delivery_never_raises(settings: Any, pgwarden_logs: pytest.LogCaptureFixture) -> None:
    settings.ADMINS = [("dba@example.com", "dba@example.com")]
    settings.EMAIL_BACKEND = "no.such.Backend"
    cluster = Cluster.objects.create(name="broken")
    alert = Alert.objects.create(
        cluster=cluster,
        kind="low_health",
        key="k",
        severity="warning",
        message="m",
        raised_at=cluster.created_at,
    )

    deliver(alert)

    assert wait_for_deliveries()
    assert any("alert email" in r.getMessage() for r in pgwarden_logs.records)
    assert mail.outbox == []


# Configuration


@pytest.mark.parametrize(
    "url", ["https://hooks.example.com/pgwarden", "http://127.0.0.1:8080/x?token=a"]
)
def test_parse_webhook_url_accepts_http_and_https(url: str) -> None:
    assert parse_webhook_url(url) == url


@pytest.mark.parametrize(
    ("raw", "complaint"),
    [
        ("ftp://example.com/x", "has scheme 'ftp'"),
        ("hooks.example.com/x", r"has scheme '\(none\)'"),
        ("https:///x", "names no host"),
        ("http://host:port/x", "is not a valid URL"),
    ],
)
def test_parse_webhook_url_refuses(raw: str, complaint: str) -> None:
    with pytest.raises(InvalidValue, match=complaint):
        parse_webhook_url(raw)


def test_a_malformed_webhook_url_is_named_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PGWARDEN_ALERT_WEBHOOK_URL", "ftp://hooks.example.com/secret-token")
    with pytest.raises(ImproperlyConfigured) as error:
        env.read("PGWARDEN_ALERT_WEBHOOK_URL")
    assert str(error.value).startswith("PGWARDEN_ALERT_WEBHOOK_URL is malformed: the value")
    assert "secret-token" not in str(error.value)
    monkeypatch.setenv("PGWARDEN_ALERT_WEBHOOK_URL", "")
    assert env.read("PGWARDEN_ALERT_WEBHOOK_URL") is None


def test_parse_email_addresses() -> None:
    assert parse_email_addresses("") == []
    assert parse_email_addresses(" a@example.com, b@example.org ") == [
        "a@example.com",
        "b@example.org",
    ]
    with pytest.raises(InvalidValue, match="'not-an-address', which is not an email address"):
        parse_email_addresses("a@example.com,not-an-address")


def test_parse_email_url() -> None:
    tls = parse_email_url("smtp+tls://alerts:p%2Fw@smtp.example.com:587")
    assert tls["EMAIL_HOST"] == "smtp.example.com"
    assert (tls["EMAIL_PORT"], tls["EMAIL_USE_TLS"], tls["EMAIL_USE_SSL"]) == (587, True, False)
    assert (tls["EMAIL_HOST_USER"], tls["EMAIL_HOST_PASSWORD"]) == ("alerts", "p/w")
    console = parse_email_url("consolemail://")
    assert console["EMAIL_BACKEND"] == "django.core.mail.backends.console.EmailBackend"
    with pytest.raises(InvalidValue, match="has scheme 'imap'"):
        parse_email_url("imap://mail.example.com")
    with pytest.raises(InvalidValue, match="names no mail server host"):
        parse_email_url("smtp://")
