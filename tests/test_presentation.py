"""endpoints.web.presentation: badges, lag text and the admin's tables, without a database.

The rows are unsaved model instances: formatting reads values, never queries.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest

from endpoints.core.retry import CircuitSnapshot
from endpoints.models import Alert, Cluster, Endpoint, FailoverEvent, HealthCheck, Role, State
from endpoints.routing.pools import PoolStats
from endpoints.routing.stats import ClusterRouting, EndpointRouting, RoutingTotals
from endpoints.web import presentation

HOSTILE = '<script>alert("x")</script>'
ESCAPED = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"
AT = datetime(2024, 5, 1, 12, 30, 5, tzinfo=UTC)


def endpoint(name: str = "pg1", **fields: Any) -> Endpoint:
    return Endpoint(cluster=Cluster(name="alpha"), name=name, host="10.0.0.1", **fields)


def cells(html: str) -> list[list[str]]:
    """Each body row's cells, as rendered (markup inside a cell kept)."""
    body = re.search(r"<tbody>(.*)</tbody>", html, re.S)
    assert body is not None, html
    return [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", body[1])]


# Values


def test_state_badge_is_coloured_by_state_and_labelled() -> None:
    badge = presentation.state_badge(endpoint(state=State.DOWN))

    assert 'class="pgw-state pgw-state-down"' in badge
    assert "background:#c62828" in badge
    assert badge.endswith(">down</span>")


def test_an_unknown_state_gets_the_unknown_colour() -> None:
    assert presentation.colour_of(endpoint(state="martian")) == "#616161"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"role": Role.PRIMARY, "replication_lag_s": 3.0}, "—"),
        ({"role": Role.REPLICA}, "—"),
        ({"role": Role.REPLICA, "replication_lag_s": 1.25}, "1.2 s"),
        (
            {"role": Role.REPLICA, "replication_lag_s": 1.0, "replication_lag_bytes": 2048},
            "1.0 s, 2048 B",
        ),
    ],
)
def test_lag_text_is_a_replicas_lag_in_seconds_and_bytes(
    fields: dict[str, Any], expected: str
) -> None:
    assert presentation.lag_text(endpoint(**fields)) == expected


def test_numbers_carry_their_unit_and_a_dash_when_unknown() -> None:
    assert presentation.number_text(None, "ms") == "—"
    assert presentation.number_text(1.25, "s") == "1.2 s"
    assert presentation.number_text(2048, "B") == "2048 B"
    assert presentation.number_text(87, "") == "87"
    assert presentation.ms_text(0.4249) == "0.42 ms"
    assert presentation.latency_text(3.25) == "3.2 ms"
    assert presentation.latency_text(None) == "—"


# Tables: what they show


def test_topology_names_the_upstream_of_each_replica() -> None:
    rows = [
        endpoint("db-a", role=Role.PRIMARY, state=State.HEALTHY),
        endpoint("db-b", role=Role.REPLICA, replication_lag_s=0.5, role_mismatch=True),
        endpoint("db-c", role=Role.REPLICA, enabled=False),
    ]

    html = presentation.topology_table(rows)

    assert html.startswith('<table class="pgw-topology"><thead>')
    [primary, replica, disabled] = cells(html)
    assert primary[0:2] == ["db-a", "primary"]
    assert primary[4:] == ["—", "—"]
    assert replica[1] == "replica — role mismatch"
    assert replica[3:] == ["10.0.0.1:5432", "replicates from db-a", "0.5 s"]
    assert disabled[1] == "replica (disabled)"
    assert "<td>db-b</td><td>replica — role mismatch</td>" in html


def test_topology_without_an_enabled_primary_says_so() -> None:
    html = presentation.topology_table([endpoint("db-b", role=Role.REPLICA)])

    assert cells(html)[0][4] == "no enabled primary"


def test_failover_table_links_each_event_and_shows_both_primaries() -> None:
    event = FailoverEvent(
        pk=7,
        kind=FailoverEvent.Kind.SWITCHOVER,
        outcome=FailoverEvent.Outcome.IN_PROGRESS,
        old_primary_name="db-a",
        started_at=AT,
    )

    html = presentation.failover_table([event])

    [[started, kind, primaries, outcome]] = cells(html)
    assert started == '<a href="/admin/endpoints/failoverevent/7/change/">2024-05-01 12:30:05</a>'
    assert (kind, primaries, outcome) == ("switchover", "db-a → —", "in progress")


def test_empty_tables_are_a_sentence() -> None:
    assert presentation.failover_table([]) == "None."
    assert presentation.alerts_table([]) == "None."
    assert presentation.health_checks_table([]) == "No health checks recorded yet."
    assert presentation.failover_steps_table([]) == "No steps recorded."


def test_health_checks_show_units_and_results() -> None:
    check = HealthCheck(checked_at=AT, ok=False, latency_ms=2.5, lag_bytes=10, score=40)

    [row] = cells(presentation.health_checks_table([check]))

    assert row == ["2024-05-01 12:30:05", "failed", "2.5 ms", "—", "10 B", "40", ""]


def test_routing_stats_show_each_endpoint_and_the_totals() -> None:
    stats = _routing_stats("pg1")

    html = presentation.routing_stats_table(stats)

    [row] = cells(html)
    assert row == [
        "pg1",
        "primary",
        "healthy",
        "yes",
        "5",
        "1",
        "2",
        "0.42 ms",
        "—",
        "half-open",
        "2 open, 1 in use, 1 idle, 0 waiting",
    ]
    assert (
        "<p>Totals: 5 requests, 1 errors, 2 retries; 1 of 1 endpoints available; average "
        "response 0.42 ms; average health score —; 2 open connections. Counted since this "
        "process started.</p>"
    ) in html


def _routing_stats(name: str) -> ClusterRouting:
    endpoint = EndpointRouting(
        role="primary",
        address="10.0.0.1:5432",
        enabled=True,
        state="healthy",
        weight=100,
        health_score=None,
        available=True,
        unusable=None,
        requests=5,
        errors=1,
        retries=2,
        latency_avg_ms=0.42,
        latency_p95_ms=None,
        circuit=CircuitSnapshot(
            state="half_open",
            consecutive_failures=3,
            failure_threshold=3,
            cooldown_s=5.0,
            open_for_s=0.0,
            opened_count=1,
        ),
        pool=PoolStats(
            size=2,
            in_use=1,
            idle=1,
            waiting=0,
            min_size=1,
            max_size=4,
            connections_opened=2,
            connection_errors=0,
        ),
    )
    totals = RoutingTotals(
        requests=5,
        errors=1,
        retries=2,
        endpoints=1,
        available_endpoints=1,
        average_response_ms=0.42,
        average_health_score=None,
        total_connections=2,
    )
    return ClusterRouting(
        cluster="alpha",
        load_balancing="round_robin",
        read_preference="primary",
        topology_version=1,
        endpoints={name: endpoint},
        totals=totals,
    )


# Tables: markup in a value is text


def test_every_table_escapes_markup_in_its_values() -> None:
    hostile_endpoint = endpoint(HOSTILE, role=Role.REPLICA)
    hostile_endpoint.host = HOSTILE
    tables = {
        "topology": presentation.topology_table(
            [endpoint("db-a", role=Role.PRIMARY), hostile_endpoint]
        ),
        "failovers": presentation.failover_table(
            [FailoverEvent(pk=1, kind="manual", new_primary_name=HOSTILE, started_at=AT)]
        ),
        "alerts": presentation.alerts_table(
            [Alert(raised_at=AT, severity="critical", kind="primary_down", message=HOSTILE)]
        ),
        "health checks": presentation.health_checks_table(
            [HealthCheck(checked_at=AT, ok=False, error=HOSTILE)]
        ),
        "steps": presentation.failover_steps_table(
            [{"at": HOSTILE, "step": HOSTILE, "ok": False, "detail": HOSTILE}]
        ),
        "routing stats": presentation.routing_stats_table(_routing_stats(HOSTILE)),
    }
    for table, html in tables.items():
        assert "<script" not in html, table
        assert ESCAPED in html, table
