"""The operator's interface to the registry. Display and actions only: logic lives in services."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, OuterRef, Q, QuerySet, Subquery
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.safestring import SafeString

from endpoints import control, failover, routing
from endpoints.forms import ClusterForm, EndpointForm, EndpointInlineFormSet
from endpoints.health.probe import ProbeResult, check_endpoints
from endpoints.models import Alert, Cluster, Endpoint, FailoverEvent, HealthCheck, Role
from endpoints.web import presentation
from endpoints.web.charts import endpoint_history
from endpoints.web.presentation import state_badge

HISTORY_ROWS = 20

CONNECTION_FIELDS = ("host", "port", "dbname", "user", "password", "clear_password")
OBSERVED_FIELDS = (
    "state_badge",
    "health_score",
    "in_recovery",
    "last_checked_at",
    "last_latency_ms",
    "replication_lag_bytes",
    "replication_lag_s",
    "consecutive_failures",
    "last_error",
)


def report_check(request: HttpRequest, endpoint: Endpoint, result: ProbeResult) -> None:
    if result.ok:
        messages.success(request, f"{endpoint}: connected. {result.summary()}.")
    else:
        messages.error(request, f"{endpoint}: connection failed: {result.error}")


class EndpointInline(admin.TabularInline):
    model = Endpoint
    form = EndpointForm
    formset = EndpointInlineFormSet
    extra = 0
    show_change_link = True
    fields = (
        "name",
        "role",
        "host",
        "port",
        "dbname",
        "user",
        "password",
        "sslmode",
        "weight",
        "enabled",
        "promotion_priority",
        "zone",
        "state_badge",
    )
    readonly_fields = ("state_badge",)

    @admin.display(description="state")
    def state_badge(self, endpoint: Endpoint) -> SafeString:
        return state_badge(endpoint)


@admin.register(Cluster)
class ClusterAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "primary_name",
        "endpoint_count",
        "read_preference",
        "load_balancing",
        "auto_failover",
        "failover_paused",
    )
    search_fields = ("name", "description")
    actions = ["pause_automatic_failover", "resume_automatic_failover"]
    form = ClusterForm
    inlines = [EndpointInline]
    fieldsets = (
        (None, {"fields": ("name", "description")}),
        (
            "Routing",
            {
                "fields": (
                    "preset",
                    "read_preference",
                    "load_balancing",
                    "max_replica_lag_s",
                    "nearest_window_ms",
                    "strict_classification",
                    "connect_timeout_s",
                    "statement_timeout_ms",
                )
            },
        ),
        (
            "Retries",
            {
                "fields": (
                    "retry_strategy",
                    "retry_max_attempts",
                    "retry_initial_delay_ms",
                    "retry_max_delay_ms",
                    "retry_multiplier",
                    "retry_increment_ms",
                    "circuit_failure_threshold",
                    "circuit_cooldown_s",
                )
            },
        ),
        (
            "Health checks",
            {
                "fields": (
                    "check_interval_s",
                    "probe_timeout_s",
                    "failure_threshold",
                    "degraded_latency_ms",
                )
            },
        ),
        (
            "Failover",
            {
                "fields": (
                    "auto_failover",
                    "max_failover_lag_bytes",
                    "fence_writes",
                    # Read-only: changed only through the pause/resume actions, the
                    # failover command and the MCP admin tools.
                    "paused",
                    "paused_at",
                    "pause_reason",
                )
            },
        ),
        (
            "Assistant access (MCP server)",
            {
                "description": "The roles manage.py run_mcp connects as: least privilege, "
                "never a superuser (it refuses one). The README's MCP section has the SQL "
                "that creates them.",
                "fields": (
                    "assistant_user",
                    "assistant_password",
                    "assistant_write_user",
                    "assistant_write_password",
                ),
            },
        ),
        (
            "Alerts",
            {
                "fields": (
                    "alert_min_available_pct",
                    "alert_max_response_ms",
                    "alert_min_health_score",
                )
            },
        ),
        ("Topology", {"fields": ("topology", "active_alerts", "failover_history")}),
        ("Routing statistics (this web process)", {"fields": ("routing_stats",)}),
    )
    readonly_fields = (
        "paused",
        "paused_at",
        "pause_reason",
        "topology",
        "active_alerts",
        "failover_history",
        "routing_stats",
    )
    change_form_template = "admin/endpoints/cluster/change_form.html"

    @admin.display(description="failover paused", boolean=True, ordering="paused")
    def failover_paused(self, cluster: Cluster) -> bool:
        return cluster.paused

    @admin.action(description="Pause automatic failover", permissions=["change"])
    def pause_automatic_failover(self, request: HttpRequest, queryset: QuerySet[Cluster]) -> None:
        for cluster in queryset:
            stored = failover.pause(cluster, reason=f"paused by {request.user} in the admin")
            messages.warning(request, f"Automatic failover of {stored.name} {stored.pause_text()}.")

    @admin.action(description="Resume automatic failover", permissions=["change"])
    def resume_automatic_failover(self, request: HttpRequest, queryset: QuerySet[Cluster]) -> None:
        for cluster in queryset:
            was = cluster.pause_text()
            stored = failover.resume(cluster)
            if was:
                messages.success(request, f"Automatic failover of {stored.name} resumed.")
            else:
                messages.info(request, f"Automatic failover of {stored.name} was not paused.")

    @admin.display(description="topology")
    def topology(self, cluster: Cluster) -> SafeString | str:
        if cluster.pk is None:
            return "—"
        # The primary first.
        return presentation.topology_table(list(cluster.endpoints.order_by("role", "name")))

    @admin.display(description="active alerts")
    def active_alerts(self, cluster: Cluster) -> SafeString | str:
        if cluster.pk is None:
            return "—"
        return presentation.alerts_table(
            cluster.alerts.filter(cleared_at__isnull=True).order_by("-raised_at")[:50]
        )

    @admin.display(description="failover history")
    def failover_history(self, cluster: Cluster) -> SafeString | str:
        if cluster.pk is None:
            return "—"
        return presentation.failover_table(
            cluster.failover_events.order_by("-started_at")[:HISTORY_ROWS]
        )

    def get_urls(self) -> list[Any]:
        return [
            path(
                "<int:object_id>/check-now/",
                self.admin_site.admin_view(self.check_now_view),
                name="endpoints_cluster_check_now",
            ),
            path(
                "<int:object_id>/failover/",
                self.admin_site.admin_view(self.failover_view),
                name="endpoints_cluster_failover",
            ),
            *super().get_urls(),
        ]

    def check_now_view(self, request: HttpRequest, object_id: int) -> HttpResponseRedirect:
        cluster = get_object_or_404(Cluster, pk=object_id)
        if request.method == "POST" and self.has_change_permission(request, cluster):
            # Under the sweep lock, as scheduled sweeps: never two at once (failures
            # counted twice, split brain handled twice).
            report, observations = control.sweep_now(cluster.pk)
            if not report.swept:
                messages.warning(request, f"No check now: {report.skipped_because}.")
            for observation in observations:
                report_check(request, observation.endpoint, observation.result)
        return HttpResponseRedirect(reverse("admin:endpoints_cluster_change", args=[object_id]))

    def failover_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        """GET: the plan for confirmation. POST: carry it out."""
        cluster = get_object_or_404(Cluster, pk=object_id)
        if not self.has_change_permission(request, cluster):
            raise PermissionDenied
        switchover = request.GET.get("switchover") == "1" or request.POST.get("switchover") == "1"
        target = request.POST.get("to") or request.GET.get("to") or None
        change_url = reverse("admin:endpoints_cluster_change", args=[object_id])
        if request.method == "POST":
            try:
                if switchover:
                    event = failover.switchover(cluster, to=target)
                else:
                    event = failover.fail_over(
                        cluster,
                        to=target,
                        kind=FailoverEvent.Kind.MANUAL,
                        reason=f"manual failover by {request.user} in the admin",
                    )
            except failover.FailoverError as exc:
                messages.error(request, str(exc))
                return HttpResponseRedirect(change_url)
            succeeded = event.outcome == FailoverEvent.Outcome.SUCCEEDED
            report = messages.success if succeeded else messages.error
            report(
                request,
                f"{event.get_kind_display()}: {event.get_outcome_display()}. "
                f"{event.old_primary_name or '—'} → {event.new_primary_name or '—'}. "
                f"{event.reason}",
            )
            return HttpResponseRedirect(
                reverse("admin:endpoints_failoverevent_change", args=[event.pk])
            )
        try:
            plan = failover.plan_failover(cluster, to=target)
        except failover.FailoverError as exc:
            messages.error(request, str(exc))
            return HttpResponseRedirect(change_url)
        context = {
            **self.admin_site.each_context(request),
            "title": f"{'Switchover' if switchover else 'Failover'} of cluster {cluster.name}",
            "cluster": cluster,
            "plan": plan,
            "switchover": switchover,
            "target": target,
            "replicas": cluster.endpoints.filter(role=Role.REPLICA, enabled=True),
            "opts": self.model._meta,
            "change_url": change_url,
        }
        return TemplateResponse(request, "admin/endpoints/cluster/failover_confirm.html", context)

    @admin.display(description="routing")
    def routing_stats(self, cluster: Cluster) -> SafeString | str:
        if cluster.pk is None:
            return "—"
        try:
            stats = routing.stats(cluster.name)
        except routing.ClusterNotFound:
            return "—"
        return presentation.routing_stats_table(stats)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Cluster]:
        return (
            super()
            .get_queryset(request)
            .annotate(
                n_endpoints=Count("endpoints"),
                n_enabled=Count("endpoints", filter=Q(endpoints__enabled=True)),
                primary=Subquery(
                    Endpoint.objects.filter(
                        cluster=OuterRef("pk"), role=Role.PRIMARY, enabled=True
                    ).values("name")[:1]
                ),
            )
        )

    @admin.display(description="endpoints (enabled)", ordering="n_endpoints")
    def endpoint_count(self, cluster: Cluster) -> str:
        return f"{cluster.n_endpoints} ({cluster.n_enabled})"  # type: ignore[attr-defined]

    @admin.display(description="primary", ordering="primary")
    def primary_name(self, cluster: Cluster) -> str:
        return cluster.primary or "—"  # type: ignore[attr-defined]


@admin.register(Endpoint)
class EndpointAdmin(admin.ModelAdmin):
    form = EndpointForm
    change_form_template = "admin/endpoints/endpoint/change_form.html"
    list_display = (
        "name",
        "cluster",
        "role",
        "state_badge",
        "health_score",
        "latency",
        "lag",
        "weight",
        "enabled",
    )
    list_filter = ("cluster", "role", "state", "enabled")
    list_select_related = ("cluster",)
    search_fields = ("name", "host")
    actions = ["check_connection_now"]
    readonly_fields = (
        *OBSERVED_FIELDS,
        "connection_url",
        "history_chart",
        "recent_health_checks",
        "failovers",
    )
    fieldsets = (
        (None, {"fields": ("cluster", "name")}),
        (
            "Connection",
            {"fields": (*CONNECTION_FIELDS, "sslmode", "sslrootcert", "connection_url")},
        ),
        ("Routing", {"fields": ("role", "enabled", "weight", "promotion_priority", "zone")}),
        (
            "Pool (per pgwarden process)",
            {
                "fields": (
                    "pool_min_size",
                    "pool_max_size",
                    "pool_timeout_s",
                    "pool_max_idle_s",
                    "pool_max_lifetime_s",
                )
            },
        ),
        ("Observed by health checks", {"fields": OBSERVED_FIELDS}),
        ("History", {"fields": ("history_chart", "recent_health_checks", "failovers")}),
    )

    @admin.display(description="state", ordering="state")
    def state_badge(self, endpoint: Endpoint) -> SafeString:
        return state_badge(endpoint)

    @admin.display(description="latency", ordering="last_latency_ms")
    def latency(self, endpoint: Endpoint) -> str:
        return presentation.latency_text(endpoint.last_latency_ms)

    @admin.display(description="lag", ordering="replication_lag_s")
    def lag(self, endpoint: Endpoint) -> str:
        return presentation.lag_text(endpoint)

    @admin.display(description="connection (password masked)")
    def connection_url(self, endpoint: Endpoint) -> str:
        return endpoint.masked_dsn() if endpoint.pk else "—"

    @admin.display(description=f"latest {HISTORY_ROWS} health checks")
    def recent_health_checks(self, endpoint: Endpoint) -> SafeString | str:
        if not endpoint.pk:
            return "—"
        return presentation.health_checks_table(
            endpoint.health_checks.order_by("-checked_at")[:HISTORY_ROWS]
        )

    @admin.display(description="failover events")
    def failovers(self, endpoint: Endpoint) -> SafeString | str:
        if not endpoint.pk:
            return "—"
        return presentation.failover_table(
            FailoverEvent.objects.filter(
                Q(old_primary=endpoint) | Q(new_primary=endpoint)
            ).order_by("-started_at")[:HISTORY_ROWS]
        )

    @admin.display(description="last hour")
    def history_chart(self, endpoint: Endpoint) -> SafeString | str:
        if not endpoint.pk:
            return "—"
        return endpoint_history(endpoint)

    @admin.action(description="Check connection now")
    def check_connection_now(self, request: HttpRequest, queryset: QuerySet[Endpoint]) -> None:
        for endpoint, result in check_endpoints(queryset.select_related("cluster")):
            report_check(request, endpoint, result)

    def get_urls(self) -> list[Any]:
        return [
            path(
                "<int:object_id>/check-connection/",
                self.admin_site.admin_view(self.check_connection_view),
                name="endpoints_endpoint_check_connection",
            ),
            *super().get_urls(),
        ]

    def check_connection_view(self, request: HttpRequest, object_id: int) -> HttpResponseRedirect:
        endpoint = get_object_or_404(Endpoint.objects.select_related("cluster"), pk=object_id)
        if request.method == "POST" and self.has_view_permission(request, endpoint):
            [(_, result)] = check_endpoints([endpoint])
            report_check(request, endpoint, result)
        return HttpResponseRedirect(reverse("admin:endpoints_endpoint_change", args=[object_id]))


class ReadOnlyAdmin(admin.ModelAdmin):
    """An audit view: nothing is added, edited or deleted through the admin."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(HealthCheck)
class HealthCheckAdmin(ReadOnlyAdmin):
    list_display = (
        "checked_at",
        "endpoint",
        "ok",
        "latency_ms",
        "in_recovery",
        "lag_s",
        "lag_bytes",
        "connections_in_use",
        "score",
        "error",
    )
    list_filter = ("ok", "endpoint__cluster")
    list_select_related = ("endpoint__cluster",)
    search_fields = ("endpoint__name",)
    # Counting a long history on every page view is the slow part: skip the full count.
    show_full_result_count = False


@admin.register(FailoverEvent)
class FailoverEventAdmin(ReadOnlyAdmin):
    list_display = (
        "started_at",
        "cluster",
        "kind",
        "old_primary_name",
        "new_primary_name",
        "outcome",
        "finished_at",
    )
    list_filter = ("cluster", "kind", "outcome")
    list_select_related = ("cluster",)
    readonly_fields = ("steps_table",)
    exclude = ("steps",)

    @admin.display(description="steps")
    def steps_table(self, event: FailoverEvent) -> SafeString | str:
        return presentation.failover_steps_table(event.steps or [])


@admin.register(Alert)
class AlertAdmin(ReadOnlyAdmin):
    list_display = ("raised_at", "cluster", "endpoint", "severity", "kind", "message", "cleared_at")
    list_filter = ("cluster", "severity", "kind", ("cleared_at", admin.EmptyFieldListFilter))
    list_select_related = ("cluster", "endpoint")
    search_fields = ("message",)
