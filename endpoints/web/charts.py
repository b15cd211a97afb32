"""Server-rendered SVG charts of health history: no JavaScript, no external assets.

The endpoint admin page and the fleet dashboard draw with the same functions.
Queries are bounded (one endpoint, one time window, a row cap), so a year of
history costs the same as an hour.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from endpoints.models import Endpoint, HealthCheck

# At 1 s checks an hour is 3,600 rows; beyond this many the chart thins them out.
MAX_POINTS = 720
# The fleet dashboard's per-endpoint sparklines: line_chart at tile size.
SPARKLINE_WIDTH = 220
SPARKLINE_HEIGHT = 44
SPARKLINE_POINTS = 110
LAG_COLOUR = "#6a1b9a"
UP_COLOUR = "#1e7d32"
DOWN_COLOUR = "#c62828"


def recent_checks(
    endpoint: Endpoint, *, window: timedelta = timedelta(hours=1)
) -> list[tuple[datetime, bool, float | None, float | None]]:
    """(checked_at, ok, latency_ms, lag_s) over ``window``, oldest first, at most MAX_POINTS."""
    since = timezone.now() - window
    rows = list(
        HealthCheck.objects.filter(endpoint=endpoint, checked_at__gte=since)
        .order_by("-checked_at")
        .values_list("checked_at", "ok", "latency_ms", "lag_s")[: MAX_POINTS * 5]
    )
    rows.reverse()
    step = max(1, len(rows) // MAX_POINTS)
    return rows[::step]


def line_chart(
    points: Sequence[tuple[datetime, float | None]],
    *,
    start: datetime,
    end: datetime,
    label: str,
    unit: str,
    width: int = 600,
    height: int = 80,
    colour: str = "#1565c0",
) -> SafeString:
    """A polyline of ``points`` between ``start`` and ``end``, with its max and last value."""
    values = [value for _, value in points if value is not None]
    if not values:
        return format_html(
            '<svg class="pgw-chart" width="{}" height="{}" role="img" aria-label="{}">'
            '<text x="4" y="{}" font-size="12" fill="#666">{}: no data</text></svg>',
            width,
            height,
            label,
            height // 2,
            label,
        )
    peak = max(values)
    top = peak or 1.0  # all zeros: a flat line at the bottom
    span = (end - start).total_seconds() or 1.0
    coordinates = " ".join(
        f"{(when - start).total_seconds() / span * width:.1f},"
        f"{height - 4 - value / top * (height - 20):.1f}"
        for when, value in points
        if value is not None
    )
    return format_html(
        '<svg class="pgw-chart" width="{}" height="{}" viewBox="0 0 {} {}" role="img" '
        'aria-label="{}"><rect width="100%" height="100%" fill="#fafafa"/>'
        '<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>'
        '<text x="4" y="12" font-size="11" fill="#333">{} (max {} {}, last {} {})</text></svg>',
        width,
        height,
        width,
        height,
        label,
        colour,
        coordinates,
        label,
        _format(peak),
        unit,
        _format(values[-1]),
        unit,
    )


def availability_strip(
    points: Sequence[tuple[datetime, bool]],
    *,
    start: datetime,
    end: datetime,
    width: int = 600,
    height: int = 14,
) -> SafeString:
    """The state timeline: one bar per check, green when it answered, red when not."""
    span = (end - start).total_seconds() or 1.0
    bar = max(1.0, width / max(len(points), 1))
    rects = format_html_join(
        "",
        '<rect x="{}" y="0" width="{}" height="{}" fill="{}"/>',
        (
            (
                f"{(when - start).total_seconds() / span * width:.1f}",
                f"{bar:.1f}",
                height,
                UP_COLOUR if ok else DOWN_COLOUR,
            )
            for when, ok in points
        ),
    )
    return format_html(
        '<svg class="pgw-timeline" width="{}" height="{}" role="img" '
        'aria-label="answered (green) or failed (red), oldest left">{}</svg>',
        width,
        height,
        rects,
    )


def endpoint_history(endpoint: Endpoint, *, window: timedelta = timedelta(hours=1)) -> SafeString:
    """Latency and lag over ``window``, and the timeline of answered/failed probes."""
    rows = recent_checks(endpoint, window=window)
    end = timezone.now()
    start = end - window
    return format_html(
        '<div class="pgw-history-charts">{}<br>{}<br>{}</div>',
        availability_strip([(when, ok) for when, ok, _, _ in rows], start=start, end=end),
        line_chart(
            [(when, latency) for when, _, latency, _ in rows],
            start=start,
            end=end,
            label="latency",
            unit="ms",
        ),
        line_chart(
            [(when, lag) for when, _, _, lag in rows],
            start=start,
            end=end,
            label="replication lag",
            unit="s",
            colour=LAG_COLOUR,
        ),
    )


def sparkline(
    points: Sequence[tuple[datetime, float | None]],
    *,
    start: datetime,
    end: datetime,
    label: str,
    unit: str,
    colour: str = "#1565c0",
) -> SafeString:
    """A tile-sized :func:`line_chart` of at most SPARKLINE_POINTS points (oldest first)."""
    step = max(1, -(-len(points) // SPARKLINE_POINTS))  # ceiling: never more points
    return line_chart(
        points[::-1][::step][::-1],  # thinned from the newest, so the last value is kept
        start=start,
        end=end,
        label=label,
        unit=unit,
        width=SPARKLINE_WIDTH,
        height=SPARKLINE_HEIGHT,
        colour=colour,
    )


def _format(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"
