"""Celery tasks: thin wrappers around the services."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from endpoints.models import Endpoint
from endpoints.probe import check_endpoint


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
