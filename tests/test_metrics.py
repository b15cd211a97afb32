"""GET /metrics, read back with prometheus-client's own parser.

The registry families are held against the registry's rows after real sweeps of the
shared local cluster, the router families against this process's routing statistics;
two separate web processes must report the same registry values.
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.test import Client
from django.utils import timezone
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from endpoints import control, routing
from endpoints.core.waiting import poll_until
from endpoints.devstack.localcluster import LocalPostgresCluster, free_port
from endpoints.models import Cluster, Endpoint, FailoverEvent, Role, State
from endpoints.routing import LATENCY_BUCKETS_MS, EndpointStats
from endpoints.web.metrics import process_label
from project.env import parse_bearer_token, read
from tests.helpers import ROOT
from tests.helpers.registry import add_endpoint

Labels = frozenset[tuple[str, str]]
Samples = dict[str, dict[Labels, float]]

TOKEN = "metrics-token-for-the-tests-0123456789"


# Each test gets a router of its own (conftest), so router series start from nothing.
pytestmark = pytest.mark.usefixtures("fresh_router")


def parse(text: str) -> Samples:
    """Every sample by name, then by its labels, as Prometheus would ingest them."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = frozenset(sample.labels.items())
            assert labels not in samples.setdefault(sample.name, {}), f"duplicate {sample}"
            samples[sample.name][labels] = sample.value
    return samples


def scrape(client: Client, **headers: str) -> Samples:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == CONTENT_TYPE_LATEST
    assert "no-cache" in response["Cache-Control"]
    return parse(response.content.decode())


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get(name, {}).get(frozenset(labels.items()))


def of_cluster(samples: Samples, name: str, cluster: str) -> dict[Labels, float]:
    return {
        labels: v for labels, v in samples.get(name, {}).items() if ("cluster", cluster) in labels
    }


@contextmanager
def broken_control_database() -> Iterator[None]:
    """The control database cannot be opened until the block ends (a real failure).

    SQLite (the tests' control database) fails to open a file in a missing directory.
    Needs ``django_db(transaction=True)``: the test's connection is closed and reopened.
    """
    assert connection.vendor == "sqlite"
    name = connection.settings_dict["NAME"]
    connection.close()
    connection.settings_dict["NAME"] = str(Path(tempfile.gettempdir()) / "no-such-dir" / "x.db")
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict["NAME"] = name


# The router's latency histogram


def test_latency_buckets_count_answered_requests_by_upper_bound() -> None:
    stats = EndpointStats()
    for latency_ms in (0.1, 0.5, 0.51, 30000, 30001):
        stats.record(latency_ms)
    stats.record(7.0, retry=True)
    stats.record(-1, error=True)  # no connection: no latency
    stats.record(12.0, error=True)  # connection lost: not an answer

    snapshot = stats.snapshot()

    assert (snapshot.requests, snapshot.errors, snapshot.retries) == (8, 2, 1)
    assert len(snapshot.latency_buckets) == len(LATENCY_BUCKETS_MS) + 1
    expected = [0] * (len(LATENCY_BUCKETS_MS) + 1)
    expected[0] = 2  # 0.1 and 0.5 (the bound itself is inside: "le")
    expected[1] = 1  # 0.51
    expected[LATENCY_BUCKETS_MS.index(10)] = 1  # 7.0
    expected[LATENCY_BUCKETS_MS.index(30000)] = 1
    expected[-1] = 1  # above every bound: +Inf only
    assert list(snapshot.latency_buckets) == expected
    assert snapshot.latency_count == 6
    assert snapshot.latency_sum_ms == pytest.approx(0.1 + 0.5 + 0.51 + 30000 + 30001 + 7.0)
    assert list(LATENCY_BUCKETS_MS) == sorted(LATENCY_BUCKETS_MS)


# The registry's families


@pytest.mark.django_db(transaction=True)
def test_endpoint_families_are_the_registrys_values_after_a_sweep(
    client: Client, local_cluster: Cluster, pg_cluster: LocalPostgresCluster, redis_server: Any
) -> None:
    pg_cluster.wait_for_replay()
    control.sweep(local_cluster)

    samples = scrape(client)

    endpoints = list(Endpoint.objects.filter(cluster=local_cluster))
    assert len(endpoints) == 3
    for endpoint in endpoints:
        labels = {"cluster": "local", "endpoint": endpoint.name, "role": endpoint.role}
        assert endpoint.state == State.HEALTHY
        assert value(samples, "pgwarden_endpoint_up", **labels) == 1
        assert value(samples, "pgwarden_endpoint_enabled", **labels) == 1
        for state in State:
            expected = 1 if state == endpoint.state else 0
            assert value(samples, "pgwarden_endpoint_state", **labels, state=state) == expected
        assert value(samples, "pgwarden_endpoint_health_score", **labels) == endpoint.health_score
        assert endpoint.last_latency_ms is not None
        assert value(samples, "pgwarden_endpoint_probe_latency_seconds", **labels) == (
            pytest.approx(endpoint.last_latency_ms / 1000)
        )
        assert value(samples, "pgwarden_endpoint_consecutive_failures", **labels) == 0
        assert value(samples, "pgwarden_endpoint_in_recovery", **labels) == (
            1 if endpoint.role == Role.REPLICA else 0
        )
        assert value(samples, "pgwarden_endpoint_role_mismatch", **labels) == 0
        assert endpoint.last_checked_at is not None
        assert value(samples, "pgwarden_endpoint_last_probe_timestamp_seconds", **labels) == (
            pytest.approx(endpoint.last_checked_at.timestamp())
        )
        lag_bytes = value(samples, "pgwarden_endpoint_replication_lag_bytes", **labels)
        lag_seconds = value(samples, "pgwarden_endpoint_replication_lag_seconds", **labels)
        if endpoint.role == Role.PRIMARY:
            assert (lag_bytes, lag_seconds) == (None, None)  # no lag series for a primary
        else:
            assert endpoint.replication_lag_bytes is not None
            assert lag_bytes == endpoint.replication_lag_bytes
            assert lag_seconds == endpoint.replication_lag_s == 0.0
    assert value(samples, "pgwarden_registry_up") == 1


@pytest.mark.django_db(transaction=True)
def test_a_dead_endpoint_is_down_in_every_family_and_not_available(
    client: Client, local_cluster: Cluster, redis_server: Any, closed_port: int
) -> None:
    Cluster.objects.filter(pk=local_cluster.pk).update(failure_threshold=1)
    local_cluster.refresh_from_db()
    add_endpoint(local_cluster, "gone", closed_port)
    control.sweep(local_cluster)

    samples = scrape(client)

    labels = {"cluster": "local", "endpoint": "gone", "role": "replica"}
    stored = Endpoint.objects.get(cluster=local_cluster, name="gone")
    assert stored.state == State.DOWN
    assert value(samples, "pgwarden_endpoint_up", **labels) == 0
    assert value(samples, "pgwarden_endpoint_state", **labels, state="down") == 1
    assert value(samples, "pgwarden_endpoint_state", **labels, state="healthy") == 0
    assert value(samples, "pgwarden_endpoint_health_score", **labels) == 0
    assert value(samples, "pgwarden_endpoint_consecutive_failures", **labels) == 1
    # Never answered: nothing to report rather than a made-up 0.
    assert value(samples, "pgwarden_endpoint_probe_latency_seconds", **labels) is None
    assert value(samples, "pgwarden_endpoint_in_recovery", **labels) is None
    assert value(samples, "pgwarden_cluster_enabled_endpoints", cluster="local") == 4
    assert value(samples, "pgwarden_cluster_available_endpoints", cluster="local") == 3
    assert value(samples, "pgwarden_cluster_primary_available", cluster="local") == 1

    # Disabled: still listed, neither enabled nor up, and no longer counted as enabled.
    Endpoint.objects.filter(pk=stored.pk).update(enabled=False)
    samples = scrape(client)
    assert value(samples, "pgwarden_endpoint_enabled", **labels) == 0
    assert value(samples, "pgwarden_endpoint_up", **labels) == 0
    assert value(samples, "pgwarden_cluster_enabled_endpoints", cluster="local") == 3


@pytest.mark.django_db(transaction=True)
def test_cluster_families_count_failovers_by_kind_and_outcome(
    client: Client, local_cluster: Cluster, django_assert_num_queries: Any
) -> None:
    samples = scrape(client)
    # Every combination from 0, so the first failover is an increase Prometheus can see.
    failovers = of_cluster(samples, "pgwarden_cluster_failovers_total", "local")
    assert len(failovers) == 3 * 3
    assert set(failovers.values()) == {0}
    assert value(samples, "pgwarden_cluster_failover_in_progress", cluster="local") == 0
    assert of_cluster(samples, "pgwarden_cluster_seconds_since_last_failover", "local") == {}

    now = timezone.now()

    def event(kind: str, outcome: str, finished_s_ago: float | None) -> None:
        finished = now - timedelta(seconds=finished_s_ago) if finished_s_ago is not None else None
        FailoverEvent.objects.create(
            cluster=local_cluster,
            kind=kind,
            outcome=outcome,
            reason="test",
            started_at=(finished or now) - timedelta(seconds=5),
            finished_at=finished,
        )

    event("automatic", "succeeded", 3600)
    event("automatic", "succeeded", 600)
    event("manual", "aborted", 30)
    event("switchover", "in_progress", None)
    other = Cluster.objects.create(name="other")
    add_endpoint(other, "solo", 5432, role=Role.PRIMARY)

    with django_assert_num_queries(4):  # whatever the number of clusters and events
        samples = scrape(client)

    failovers = of_cluster(samples, "pgwarden_cluster_failovers_total", "local")
    counted = {
        (dict(labels)["kind"], dict(labels)["outcome"]): v for labels, v in failovers.items()
    }
    assert counted.pop(("automatic", "succeeded")) == 2
    assert counted.pop(("manual", "aborted")) == 1
    assert set(counted.values()) == {0}  # the one in progress is not counted until it ends
    assert value(samples, "pgwarden_cluster_failover_in_progress", cluster="local") == 1
    [(labels, since)] = of_cluster(
        samples, "pgwarden_cluster_seconds_since_last_failover", "local"
    ).items()
    assert dict(labels) == {"cluster": "local", "kind": "manual", "outcome": "aborted"}
    assert 30 <= since < 60
    assert of_cluster(samples, "pgwarden_cluster_seconds_since_last_failover", "other") == {}
    assert set(of_cluster(samples, "pgwarden_cluster_failovers_total", "other").values()) == {0}


# This process's router


@pytest.mark.django_db(transaction=True)
def test_router_families_are_this_processs_routing_stats(
    client: Client, local_cluster: Cluster, redis_server: Any
) -> None:
    for _ in range(3):
        routing.execute("local", "SELECT 1")  # primary_preferred: the primary
    for _ in range(4):
        routing.execute("local", "SELECT 1", read_preference="secondary")
    with pytest.raises(routing.QueryError):
        routing.execute("local", "SELECT 1/0")  # answered: in the histogram, not an error

    samples = scrape(client)
    stats = routing.stats("local")

    process = f"{socket.gethostname()}:{os.getpid()}"
    assert process_label() == process
    assert value(samples, "pgwarden_router_clusters", process=process) == 1
    total = 0.0
    for name, endpoint in stats.endpoints.items():
        labels = {"cluster": "local", "endpoint": name, "role": endpoint.role}
        labels["process"] = process
        requests = value(samples, "pgwarden_router_requests_total", **labels)
        assert requests == endpoint.requests
        total += requests
        assert value(samples, "pgwarden_router_errors_total", **labels) == endpoint.errors == 0
        assert value(samples, "pgwarden_router_retries_total", **labels) == 0
        circuit = {
            dict(labels_)["state"]: v
            for labels_, v in samples["pgwarden_router_circuit_state"].items()
            if ("endpoint", name) in labels_
        }
        assert circuit == {"closed": 1, "open": 0, "half_open": 0}
        assert value(samples, "pgwarden_router_circuit_opened_total", **labels) == 0
        pool = endpoint.pool
        if pool is None:
            assert value(samples, "pgwarden_router_pool_size", **labels) is None
        else:
            assert value(samples, "pgwarden_router_pool_size", **labels) == pool.size
            assert value(samples, "pgwarden_router_pool_max_size", **labels) == pool.max_size
            assert value(samples, "pgwarden_router_pool_in_use", **labels) == pool.in_use == 0
            assert value(samples, "pgwarden_router_pool_waiting", **labels) == pool.waiting
        # The histogram: cumulative, +Inf is the count, every answered request counted.
        buckets = [
            (float(dict(labels_)["le"]), v)
            for labels_, v in samples["pgwarden_router_query_duration_seconds_bucket"].items()
            if ("endpoint", name) in labels_
        ]
        buckets.sort()
        assert [le for le, _ in buckets] == [b / 1000 for b in LATENCY_BUCKETS_MS] + [float("inf")]
        counts = [v for _, v in buckets]
        assert counts == sorted(counts)
        count = value(samples, "pgwarden_router_query_duration_seconds_count", **labels)
        assert counts[-1] == count == requests
        latency_sum = value(samples, "pgwarden_router_query_duration_seconds_sum", **labels)
        assert latency_sum is not None
        assert (latency_sum > 0) == (count > 0)
        assert latency_sum < 5 * (count or 1)
    assert total == 3 + 4 + 1
    primary = {"cluster": "local", "endpoint": "primary", "role": "primary", "process": process}
    assert value(samples, "pgwarden_router_requests_total", **primary) == 4


@pytest.mark.django_db(transaction=True)
def test_a_refused_endpoint_counts_errors_and_opens_its_circuit(
    client: Client, local_cluster: Cluster, redis_server: Any, closed_port: int
) -> None:
    broken = Cluster.objects.create(
        name="broken", circuit_failure_threshold=1, retry_max_attempts=1
    )
    add_endpoint(broken, "dead", closed_port, role=Role.PRIMARY)

    with pytest.raises(routing.NoEndpointAvailable):
        routing.execute("broken", "SELECT 1")
    samples = scrape(client)

    labels = {"cluster": "broken", "endpoint": "dead", "role": "primary"}
    labels["process"] = process_label()
    assert value(samples, "pgwarden_router_requests_total", **labels) == 1
    assert value(samples, "pgwarden_router_errors_total", **labels) == 1
    assert value(samples, "pgwarden_router_circuit_state", **labels, state="open") == 1
    assert value(samples, "pgwarden_router_circuit_state", **labels, state="closed") == 0
    assert value(samples, "pgwarden_router_circuit_opened_total", **labels) == 1
    assert value(samples, "pgwarden_router_query_duration_seconds_count", **labels) == 0
    # Only the cluster this process routed to has router series; both have registry ones.
    routed = {dict(labels_)["cluster"] for labels_ in samples["pgwarden_router_requests_total"]}
    assert routed == {"broken"}
    assert value(samples, "pgwarden_cluster_primary_available", cluster="local") == 1
    assert value(samples, "pgwarden_cluster_enabled_endpoints", cluster="broken") == 1


@pytest.mark.django_db(transaction=True)
def test_a_scrape_creates_no_router_pool_or_connection(
    client: Client, local_cluster: Cluster
) -> None:
    samples = scrape(client)

    assert routing.current_router() is None
    assert value(samples, "pgwarden_router_clusters", process=process_label()) == 0
    assert "pgwarden_router_requests_total" not in samples
    assert value(samples, "pgwarden_cluster_primary_available", cluster="local") == 1


@pytest.mark.django_db(transaction=True)
def test_without_the_control_database_the_router_families_remain(
    client: Client, local_cluster: Cluster, redis_server: Any
) -> None:
    routing.execute("local", "SELECT 1")

    with broken_control_database():
        samples = scrape(client)

    assert value(samples, "pgwarden_registry_up") == 0
    assert not [
        name for name in samples if name.startswith(("pgwarden_endpoint_", "pgwarden_cluster_"))
    ]
    labels = {"cluster": "local", "endpoint": "primary", "role": "primary"}
    assert value(samples, "pgwarden_router_requests_total", **labels, process=process_label()) == 1


# The token


@pytest.mark.django_db(transaction=True)
def test_with_a_token_only_its_bearer_gets_the_metrics(
    client: Client, settings: Any, local_cluster: Cluster
) -> None:
    settings.PGWARDEN_METRICS_TOKEN = TOKEN

    refusals = [
        client.get("/metrics"),
        client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN[:-1]}"}),
        client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}x"}),
        client.get("/metrics", headers={"Authorization": "Bearer"}),
        client.get("/metrics", headers={"Authorization": f"Basic {TOKEN}"}),
        client.get("/metrics", headers={"Authorization": TOKEN}),
    ]
    for response in refusals:
        assert response.status_code == 401
        assert response["WWW-Authenticate"] == 'Bearer realm="pgwarden metrics"'
        assert response.json() == {
            "error": "this endpoint needs the header Authorization: Bearer <token>"
        }
        assert b"pgwarden_" not in response.content

    samples = scrape(client, Authorization=f"Bearer {TOKEN}")
    assert value(samples, "pgwarden_registry_up") == 1
    assert scrape(client, Authorization=f"bearer {TOKEN}")  # the scheme is case-insensitive


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("", ""), ("   ", ""), (f" {TOKEN} ", TOKEN), ("abcDEF0123456789-._~+/==", None)],
)
def test_the_token_setting_is_blank_or_a_bearer_token(raw: str, expected: str | None) -> None:
    assert parse_bearer_token(raw) == (raw if expected is None else expected)


@pytest.mark.parametrize(
    ("raw", "complaint"),
    [
        ("short-token", "is shorter than 16 characters"),
        ("two words in a long token", "has characters a bearer token cannot carry"),
        ('token-with-a-quote-"-inside', "has characters a bearer token cannot carry"),
        ("pässwörd-0123456789", "has characters a bearer token cannot carry"),
    ],
)
def test_a_malformed_token_stops_start_up_without_showing_it(
    monkeypatch: pytest.MonkeyPatch, raw: str, complaint: str
) -> None:
    monkeypatch.setenv("PGWARDEN_METRICS_TOKEN", raw)

    with pytest.raises(ImproperlyConfigured) as caught:
        read("PGWARDEN_METRICS_TOKEN")

    assert str(caught.value).startswith(
        f"PGWARDEN_METRICS_TOKEN is malformed: the value {complaint}"
    )
    assert raw not in str(caught.value)


@pytest.mark.django_db(transaction=True)
def test_without_a_token_the_metrics_are_open_to_get_only(client: Client, settings: Any) -> None:
    settings.PGWARDEN_METRICS_TOKEN = ""

    assert value(scrape(client), "pgwarden_registry_up") == 1
    assert client.head("/metrics").status_code == 200
    assert client.post("/metrics").status_code == 405


# Several processes


def _get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return response.read().decode()


def _registry_samples(samples: Samples) -> Samples:
    return {name: s for name, s in samples.items() if not name.startswith("pgwarden_router_")}


@pytest.mark.django_db(transaction=True)
def test_separate_web_processes_report_the_same_registry_values(
    local_cluster: Cluster, redis_server: Any, tmp_path: Path
) -> None:
    control.sweep(local_cluster)
    servers: list[tuple[int, subprocess.Popen[bytes]]] = []
    try:
        for index in range(2):
            port = free_port()
            log = (tmp_path / f"web{index}.log").open("wb")
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gunicorn",
                    "project.wsgi",
                    f"--bind=127.0.0.1:{port}",
                    "--workers=1",
                    "--no-control-socket",
                ],
                cwd=ROOT,
                env=dict(os.environ),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            servers.append((port, process))
        for port, process in servers:
            answer = poll_until(
                functools.partial(_healthz_or_exit, port, process),
                timeout_s=30,
                interval_s=0.1,
            )
            if answer != '{"alive": true}':
                logs = "\n".join(p.read_text() for p in tmp_path.glob("*.log"))
                pytest.fail(f"gunicorn did not come up ({answer!r}):\n{logs[-3000:]}")

        scrapes = [parse(_get(port, "/metrics")) for port, _ in servers]
    finally:
        for _, process in servers:
            process.terminate()
        for _, process in servers:
            process.wait(timeout=20)

    first, second = scrapes
    assert _registry_samples(first) == _registry_samples(second)
    assert value(first, "pgwarden_endpoint_up", cluster="local", endpoint="primary", role="primary")
    # Each answered for itself: its own process label, no router series (it routed nothing).
    processes = [
        set(dict(labels)["process"] for labels in s["pgwarden_router_clusters"]) for s in scrapes
    ]
    assert len(processes[0]) == len(processes[1]) == 1
    assert processes[0] != processes[1]


def _healthz_or_exit(port: int, process: subprocess.Popen[bytes]) -> str | None:
    """/healthz's body once gunicorn answers; "exited" if it died; None while it starts."""
    if process.poll() is not None:
        return "exited"
    try:
        return _get(port, "/healthz")
    except OSError:
        return None
