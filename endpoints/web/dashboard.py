"""The fleet dashboard: every cluster on one page, refreshed in place every few seconds.

``fleet_view()`` gathers what the page shows in a fixed number of queries, whatever the
number of clusters and however long the health history: clusters (with the id of their
last failover), endpoints, those failovers, the active alerts, and one bounded query of
recent health checks for the sparklines (a time window and a row cap per endpoint,
served by the ``(endpoint, -checked_at)`` index). The page (``dashboard``) and its JSON
view (``dashboard_data``) render each cluster with the same template, so the page's
script swaps in exactly what a reload would show. Sparklines are drawn on the server by
:mod:`endpoints.web.charts`, the renderer of the endpoint admin page's history chart.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import wraps
from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import Count, F, OuterRef, Subquery, Window
from django.db.models.functions import Least, Mod, RowNumber
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.safestring import SafeString
from django.views.decorators.cache import never_cache

from endpoints.core.crypto import redact
from endpoints.core.jsonsafe import to_json
from endpoints.models import Alert, Cluster, Endpoint, FailoverEvent, HealthCheck, Role, State
from endpoints.services import fleet
from endpoints.web import charts
from endpoints.web.presentation import (
    NOTHING,
    STATE_COLOURS,
    colour_of,
    lag_text,
    latency_text,
    state_badge,
)

# The page fetches the JSON view this often (seconds).
REFRESH_S = 3
# Sparklines cover this window; at 1 s checks that is SPARKLINE_ROWS rows per endpoint,
# and more frequent checks are capped there (the newest rows win).
SPARKLINE_WINDOW = timedelta(minutes=15)
SPARKLINE_ROWS = 900
ALERTS_SHOWN = 20  # per cluster; the rest are a link away
# Beyond staff status: the page shows every cluster and endpoint.
REQUIRED_PERMISSIONS = ("endpoints.view_cluster", "endpoints.view_endpoint")
AVAILABLE_STATES = (State.HEALTHY, State.DEGRADED)

History = list[tuple[datetime, bool, float | None, float | None]]


@dataclass
class Tile:
    """One endpoint as the dashboard shows it."""

    endpoint: Endpoint
    latency_chart: SafeString
    lag_chart: SafeString

    @property
    def colour(self) -> str:
        return colour_of(self.endpoint)

    @property
    def badge(self) -> SafeString:
        return state_badge(self.endpoint)

    @property
    def score(self) -> str:
        score = self.endpoint.health_score
        return "—" if score is None else str(score)

    @property
    def answered(self) -> bool:
        """Did the last probe answer? Latency and lag are kept from the last one that did."""
        return self.endpoint.consecutive_failures == 0

    @property
    def latency(self) -> str:
        return latency_text(self.endpoint.last_latency_ms) if self.answered else NOTHING

    @property
    def lag(self) -> str:
        return lag_text(self.endpoint) if self.answered else NOTHING

    @property
    def error(self) -> str:
        # Only while it matters: a healthy endpoint's last error is history.
        if self.endpoint.state == State.HEALTHY:
            return ""
        return redact(self.endpoint.last_error) if self.endpoint.last_error else ""

    def data(self) -> dict[str, Any]:
        e = self.endpoint
        return {
            "name": e.name,
            "role": e.role,
            "enabled": e.enabled,
            "state": e.state,
            "health_score": e.health_score,
            "latency_ms": None if e.last_latency_ms is None else round(e.last_latency_ms, 3),
            "lag_s": e.replication_lag_s,
            "lag_bytes": e.replication_lag_bytes,
            "in_recovery": e.in_recovery,
            "role_mismatch": e.role_mismatch,
            "consecutive_failures": e.consecutive_failures,
            "last_checked_at": to_json(e.last_checked_at),
        }


@dataclass(frozen=True)
class ShownAlert:
    """An active alert, its message redacted of every password this process knows."""

    alert: Alert
    endpoint: Endpoint | None
    message: str

    def data(self) -> dict[str, Any]:
        return {
            "kind": self.alert.kind,
            "severity": self.alert.severity,
            "message": self.message,
            "endpoint": self.endpoint.name if self.endpoint is not None else None,
            "since": to_json(self.alert.raised_at),
        }


@dataclass
class ClusterView:
    cluster: Cluster
    tiles: list[Tile] = field(default_factory=list)
    last_failover: FailoverEvent | None = None
    alerts: list[ShownAlert] = field(default_factory=list)

    @property
    def dom_id(self) -> str:
        return f"pgw-cluster-{self.cluster.pk}"

    @property
    def primary(self) -> Endpoint | None:
        return next(
            (
                t.endpoint
                for t in self.tiles
                if t.endpoint.role == Role.PRIMARY and t.endpoint.enabled
            ),
            None,
        )

    @property
    def replicas(self) -> list[Endpoint]:
        """Everything but the enabled primary: what replicates (or should) from it."""
        primary = self.primary
        return [t.endpoint for t in self.tiles if t.endpoint != primary]

    def upstream(self, replica: Endpoint) -> str | None:
        """The endpoint ``replica`` streams from, as registered: the enabled primary."""
        primary = self.primary
        if primary is None or not replica.enabled or replica.state == State.FENCED:
            return None
        return primary.name

    @property
    def topology(self) -> list[dict[str, Any]]:
        """The replicas under the primary, each with what it replicates from and its lag."""
        rows = []
        for replica in self.replicas:
            upstream = self.upstream(replica)
            if not replica.enabled:
                relation = "disabled"
            elif replica.state == State.FENCED:
                relation = "fenced, not replicating"
            elif upstream is None:
                relation = "no upstream"
            else:
                relation = f"replicates from {upstream}"
            if replica.role == Role.PRIMARY:
                relation = f"primary (disabled), {relation}"
            rows.append(
                {
                    "name": replica.name,
                    "state": replica.state,
                    "state_display": replica.get_state_display(),
                    "colour": colour_of(replica),
                    "relation": relation,
                    "lag": (
                        lag_text(replica)
                        if upstream is not None and not replica.consecutive_failures
                        else "—"
                    ),
                }
            )
        return rows

    @property
    def primary_colour(self) -> str:
        primary = self.primary
        return colour_of(primary) if primary is not None else STATE_COLOURS[State.UNKNOWN]

    @property
    def available(self) -> int:
        return sum(t.endpoint.enabled and t.endpoint.state in AVAILABLE_STATES for t in self.tiles)

    @property
    def enabled(self) -> int:
        return sum(t.endpoint.enabled for t in self.tiles)

    @property
    def shown_alerts(self) -> list[ShownAlert]:
        return self.alerts[:ALERTS_SHOWN]

    @property
    def more_alerts(self) -> int:
        return max(0, len(self.alerts) - ALERTS_SHOWN)

    @property
    def alerts_url(self) -> str:
        return (
            reverse("admin:endpoints_alert_changelist")
            + f"?cluster__id__exact={self.cluster.pk}&cleared_at__isempty=1"
        )

    def data(self) -> dict[str, Any]:
        primary = self.primary
        return {
            "id": self.cluster.pk,
            "name": self.cluster.name,
            "primary": primary.name if primary is not None else None,
            "available": self.available,
            "enabled": self.enabled,
            "auto_failover": self.cluster.auto_failover,
            "paused": self.cluster.paused,
            "paused_since": to_json(self.cluster.paused_at) if self.cluster.paused else None,
            "pause_reason": self.cluster.pause_reason if self.cluster.paused else "",
            "endpoints": [tile.data() for tile in self.tiles],
            "topology": {
                "primary": primary.name if primary is not None else None,
                "replicas": [
                    {"name": replica.name, "replicates_from": self.upstream(replica)}
                    for replica in self.replicas
                ],
            },
            "last_failover": (
                fleet.failover_event(self.last_failover, steps=False).as_json()
                if self.last_failover is not None
                else None
            ),
            "active_alerts": [alert.data() for alert in self.shown_alerts],
            "more_alerts": self.more_alerts,
        }


def recent_history(
    endpoint_ids: list[int],
    since: datetime,
    *,
    rows: int = SPARKLINE_ROWS,
    points: int = charts.SPARKLINE_POINTS,
) -> dict[int, History]:
    """Each endpoint's checks since ``since``, oldest first; one query.

    Of each endpoint's newest ``rows`` checks, every n-th (the newest included) so that
    at most ``points`` come back: the database thins them, so a large fleet's
    dashboard does not carry every second of its window into Python. Naming the
    endpoints lets the database search the ``(endpoint, -checked_at)`` index once per
    endpoint from ``since`` on, instead of scanning it all.
    """
    per_endpoint = [F("endpoint_id")]
    ranked = (
        HealthCheck.objects.filter(endpoint_id__in=endpoint_ids, checked_at__gte=since)
        .annotate(
            newest_first=Window(
                RowNumber(), partition_by=per_endpoint, order_by=F("checked_at").desc()
            ),
            in_window=Window(Count("pk"), partition_by=per_endpoint),
        )
        # Integer division: the step that leaves at most ``points`` of the rows kept.
        .annotate(step=(Least(F("in_window"), rows) + (points - 1)) / points)
        .annotate(position=Mod(F("newest_first") - 1, F("step")))
        .filter(newest_first__lte=rows, position=0)
        .order_by("endpoint_id", "checked_at")
        .values_list("endpoint_id", "checked_at", "ok", "latency_ms", "lag_s")
    )
    history: dict[int, History] = defaultdict(list)
    for endpoint_id, checked_at, ok, latency_ms, lag_s in ranked:
        history[endpoint_id].append((checked_at, ok, latency_ms, lag_s))
    return history


def fleet_view() -> list[ClusterView]:
    """Every cluster, its endpoints as tiles, last failover and active alerts."""
    last_failover = FailoverEvent.objects.filter(cluster=OuterRef("pk")).order_by("-started_at")
    clusters = list(
        Cluster.objects.annotate(last_failover_id=Subquery(last_failover.values("pk")[:1]))
    )
    if not clusters:
        return []
    views = {cluster.pk: ClusterView(cluster) for cluster in clusters}
    failover_ids = [c.last_failover_id for c in clusters if c.last_failover_id]
    # The steps (a JSON log) are for the event's own page.
    failovers = FailoverEvent.objects.defer("steps").in_bulk(failover_ids) if failover_ids else {}
    for cluster in clusters:
        views[cluster.pk].last_failover = failovers.get(cluster.last_failover_id)

    end = timezone.now()
    start = end - SPARKLINE_WINDOW
    endpoints = list(Endpoint.objects.order_by("cluster_id", "name"))
    history = recent_history([e.pk for e in endpoints], start) if endpoints else {}
    by_id: dict[int, Endpoint] = {}
    for endpoint in sorted(endpoints, key=lambda e: (e.role != Role.PRIMARY, e.name)):
        view = views[endpoint.cluster_id]
        endpoint.cluster = view.cluster  # no query per endpoint for str() and links
        by_id[endpoint.pk] = endpoint
        rows = history.get(endpoint.pk, [])
        view.tiles.append(
            Tile(
                endpoint,
                latency_chart=charts.sparkline(
                    [(when, latency) for when, _, latency, _ in rows],
                    start=start,
                    end=end,
                    label="latency",
                    unit="ms",
                ),
                lag_chart=charts.sparkline(
                    [(when, lag) for when, _, _, lag in rows],
                    start=start,
                    end=end,
                    label="lag",
                    unit="s",
                    colour=charts.LAG_COLOUR,
                ),
            )
        )
    # Active alerts are few (one per condition, a database constraint), so all of them.
    for alert in Alert.objects.filter(cleared_at__isnull=True).order_by("-raised_at"):
        alerted = by_id.get(alert.endpoint_id) if alert.endpoint_id else None
        views[alert.cluster_id].alerts.append(ShownAlert(alert, alerted, redact(alert.message)))
    return list(views.values())


def render_cluster(view: ClusterView, request: HttpRequest | None = None) -> SafeString:
    return SafeString(
        render_to_string("endpoints/fleet_cluster.html", {"view": view}, request=request)
    )


# Views


def _may_view(request: HttpRequest) -> bool:
    return all(request.user.has_perm(permission) for permission in REQUIRED_PERMISSIONS)


def staff_json(
    view: Callable[[HttpRequest], HttpResponse],
) -> Callable[[HttpRequest], HttpResponse]:
    """As ``admin_site.admin_view``, but a script gets a JSON 403, not the login page."""

    @wraps(view)
    @never_cache
    def wrapper(request: HttpRequest) -> HttpResponse:
        if not admin.site.has_permission(request):
            error = "log in to the admin as a staff user"
        elif not _may_view(request):
            error = "permission to view clusters and endpoints needed"
        else:
            return view(request)
        return JsonResponse({"error": error, "login_url": reverse("admin:login")}, status=403)

    return wrapper


def dashboard(request: HttpRequest) -> HttpResponse:
    """The page (wrapped in ``admin_site.admin_view`` by the URLconf: staff only)."""
    if not _may_view(request):
        raise PermissionDenied
    views = fleet_view()
    context = {
        **admin.site.each_context(request),
        "title": "Fleet dashboard",
        "clusters": [(view, render_cluster(view, request)) for view in views],
        "refresh_s": REFRESH_S,
        "window_minutes": int(SPARKLINE_WINDOW.total_seconds() // 60),
        "generated_at": timezone.now(),
        "empty": empty_fleet(),
    }
    return TemplateResponse(request, "endpoints/fleet.html", context)


@staff_json
def dashboard_data(request: HttpRequest) -> HttpResponse:
    """Each cluster's data and its server-rendered HTML, for the page's refresh."""
    views = fleet_view()
    return JsonResponse(
        {
            "generated_at": timezone.now().isoformat(),
            "refresh_s": REFRESH_S,
            "clusters": [
                {**view.data(), "dom_id": view.dom_id, "html": render_cluster(view, request)}
                for view in views
            ],
            "empty_html": str(empty_fleet()) if not views else "",
        }
    )


def empty_fleet() -> SafeString:
    return SafeString(render_to_string("endpoints/fleet_empty.html").strip())
