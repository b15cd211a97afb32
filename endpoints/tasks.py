"""Celery tasks: thin wrappers around the services.

Beat runs ``dispatch_sweeps`` every second and ``prune_health_checks`` hourly
(settings.CELERY_BEAT_SCHEDULE). Sweep tasks store no result: one per cluster
per second would fill the result backend with documents nobody reads.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import timedelta
from typing import Any

from celery import shared_task
from django.conf import settings

from endpoints import control, health
from endpoints.health.probe import check_endpoint
from endpoints.models import Cluster, Endpoint


@shared_task(name="endpoints.check_connection")
def check_connection(endpoint_id: int) -> dict[str, Any]:
    """Connect to one endpoint with its own settings; the result, never the password."""
    endpoint = Endpoint.objects.select_related("cluster").get(pk=endpoint_id)
    result = check_endpoint(endpoint)
    return {
        "endpoint": str(endpoint),
        "ok": result.ok,
        "server_version": result.server_version,
        "in_recovery": result.in_recovery,
        "latency_ms": result.latency_ms,
        "error": result.error,
    }


@shared_task(name="endpoints.sweep_cluster", ignore_result=True)
def sweep_cluster(cluster_id: int) -> dict[str, Any]:
    """One sweep of one cluster, skipped when another sweep of it is running anywhere."""
    return asdict(control.sweep_exclusively(cluster_id))


@shared_task(name="endpoints.dispatch_sweeps", ignore_result=True)
def dispatch_sweeps() -> list[int]:
    """Send a sweep for every cluster whose check interval has elapsed; their ids."""
    intervals = dict(Cluster.objects.values_list("pk", "check_interval_s"))
    due = health.claim_due_sweeps(intervals.items())
    for cluster_id in due:
        sweep_cluster.apply_async(
            args=(cluster_id,), expires=health.sweep_expiry_s(intervals[cluster_id])
        )
    return due


@shared_task(name="endpoints.prune_health_checks", ignore_result=True)
def prune_health_checks() -> dict[str, int]:
    """Delete health checks older than PGWARDEN_HEALTH_RETENTION_DAYS, in batches."""
    report = health.prune_health_checks(
        older_than=timedelta(days=settings.PGWARDEN_HEALTH_RETENTION_DAYS)
    )
    return asdict(report)
