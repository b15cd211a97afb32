"""Pages with a year of health history: the dashboard, its JSON view and the endpoint page.

The issue's target: with 1,000,000 HealthCheck rows the fleet dashboard and the endpoint
admin page (with its history chart) render in well under a second (< 1000 ms).

What is measured: Django's test client, logged in as a superuser, requests each page
through the whole stack (middleware, session, queries, templates, the SVG charts);
median of several requests after a warm-up one. The baseline is the same page with no
history at all, measured first in the same run, so the ratio is what the history costs.

The history: 1,000,000 rows for the three endpoints of the registered cluster ``local``,
written straight into the control database (SQLite here, as in the tests) by one
``INSERT ... SELECT`` per endpoint and period. The last two hours hold one check a
second per endpoint, as production's 1 s sweeps write them, so the pages' time windows
(15 minutes of sparklines, the admin chart's hour) are as full as they get; the rest is
spread evenly over the year before. One check in 500 failed.
"""

from __future__ import annotations

import statistics
import sys
import time
from datetime import UTC, datetime, timedelta

from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from endpoints.models import Cluster, Endpoint, HealthCheck, Role

Row = tuple[str, str, str, str, str]

CLUSTER = "local"
ROWS = 1_000_000
DENSE = timedelta(hours=2)  # one check a second per endpoint
YEAR = timedelta(days=365)
TARGET_MS = 1000.0
USERNAME = "bench-dashboard"


def run(*, quick: bool) -> list[Row]:
    requests = 5 if quick else 15
    cluster = Cluster.objects.get(name=CLUSTER)
    endpoints = list(cluster.endpoints.order_by("name"))
    replica = next(e for e in endpoints if e.role == Role.REPLICA)
    pages = {
        "dashboard page": reverse("fleet:dashboard"),
        "dashboard JSON": reverse("fleet:data"),
        "endpoint admin page": reverse("admin:endpoints_endpoint_change", args=[replica.pk]),
    }
    client = Client()
    user = get_user_model().objects.create_superuser(USERNAME, "bench@example.com", None)
    client.force_login(user)
    try:
        HealthCheck.objects.filter(endpoint__cluster=cluster).delete()
        baseline = {label: median_ms(client, url, requests) for label, url in pages.items()}
        print(f"writing {ROWS:,} health checks for the dashboard bench", file=sys.stderr)
        started = time.perf_counter()
        write_history(endpoints, ROWS)
        print(f"  written in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        loaded = {label: median_ms(client, url, requests) for label, url in pages.items()}
    finally:
        user.delete()
    return [
        (
            f"{label}, {ROWS:,} health checks (ms)",
            f"{loaded[label]:.1f}",
            f"{baseline[label]:.1f} (no history)",
            f"{loaded[label] / baseline[label]:.2f}",
            f"< {TARGET_MS:.0f} ms",
        )
        for label in pages
    ]


def median_ms(client: Client, url: str, requests: int) -> float:
    response = client.get(url)  # warm-up: templates, imports
    assert response.status_code == 200, (url, response.status_code)
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (url, response.status_code)
    return statistics.median(times)


def write_history(endpoints: list[Endpoint], rows: int) -> None:
    """``rows`` checks over a year, the last DENSE of them one a second per endpoint."""
    now = timezone.now().timestamp()
    dense = int(DENSE.total_seconds())
    sparse = rows // len(endpoints) - dense
    sparse_span = (YEAR - DENSE).total_seconds()
    with transaction.atomic():
        for number, endpoint in enumerate(endpoints):
            # The remainder of the division goes to the first endpoint: exactly ``rows``.
            count = sparse + (rows - len(endpoints) * (dense + sparse) if number == 0 else 0)
            step = sparse_span / count
            # Row i was checked (offset + i * step) seconds ago.
            insert(endpoint, now, count, offset=dense + step, step=step)
            insert(endpoint, now, dense, offset=0.0, step=1.0)


def insert(endpoint: Endpoint, now: float, count: int, *, offset: float, step: float) -> None:
    replica = endpoint.role == Role.REPLICA
    if connection.vendor != "sqlite":
        bulk_create(endpoint, now, count, offset=offset, step=step, replica=replica)
        return
    # Django stores aware datetimes in SQLite as UTC text, 'YYYY-MM-DD HH:MM:SS[.ffffff]'.
    sql = """
        WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < %s - 1)
        INSERT INTO endpoints_healthcheck (
            endpoint_id, checked_at, ok, latency_ms, in_recovery, lag_bytes, lag_s,
            connections_in_use, max_connections, error, score
        )
        SELECT
            %s,
            strftime('%%Y-%%m-%%d %%H:%%M:%%S', CAST(%s - (%s + i * %s) AS INTEGER), 'unixepoch'),
            i %% 500 != 7,
            CASE WHEN i %% 500 != 7 THEN 0.5 + abs(random() %% 3000) / 1000.0 END,
            %s,
            CASE WHEN %s AND i %% 500 != 7 THEN abs(random() %% 65536) END,
            CASE WHEN %s AND i %% 500 != 7 THEN abs(random() %% 1000) / 1000.0 END,
            5,
            100,
            CASE WHEN i %% 500 = 7 THEN 'connection refused' ELSE '' END,
            CASE WHEN i %% 500 = 7 THEN 0 ELSE 90 + abs(random() %% 10) END
        FROM n
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, [count, endpoint.pk, now, offset, step, replica, replica, replica])


def bulk_create(
    endpoint: Endpoint, now: float, count: int, *, offset: float, step: float, replica: bool
) -> None:
    """The same rows through the ORM, for a control database other than SQLite (slower)."""
    batch: list[HealthCheck] = []
    for i in range(count):
        ok = i % 500 != 7
        batch.append(
            HealthCheck(
                endpoint=endpoint,
                checked_at=datetime.fromtimestamp(int(now - (offset + i * step)), tz=UTC),
                ok=ok,
                latency_ms=1.0 if ok else None,
                in_recovery=replica,
                lag_s=0.1 if ok and replica else None,
                connections_in_use=5,
                max_connections=100,
                error="" if ok else "connection refused",
                score=95 if ok else 0,
            )
        )
        if len(batch) == 10_000:
            HealthCheck.objects.bulk_create(batch)
            batch = []
    HealthCheck.objects.bulk_create(batch)
