"""Alerts: raised once when a condition starts, cleared when it ends, kept as history.

A *condition* (primary down, replica lag over bound, ...) is identified by a
key per cluster; at most one alert per key is active (a database constraint),
so a condition that persists over many sweeps fires once, not on every sweep.
An *event* (a failover started, succeeded, failed or was aborted) is recorded
already cleared: it happened, there is nothing to clear.

Delivery: every alert is logged on the ``pgwarden.alerts`` logger.
"""

from __future__ import annotations

import logging

from django.db import IntegrityError, transaction
from django.utils import timezone

from endpoints.models import Alert, Cluster, Endpoint

logger = logging.getLogger("pgwarden.alerts")

_LOG_LEVELS: dict[str, int] = {
    Alert.Severity.INFO: logging.INFO,
    Alert.Severity.WARNING: logging.WARNING,
    Alert.Severity.CRITICAL: logging.CRITICAL,
}


def raise_alert(
    cluster: Cluster,
    kind: str,
    key: str,
    severity: str,
    message: str,
    *,
    endpoint: Endpoint | None = None,
) -> Alert | None:
    """Record and deliver an alert for condition ``key``; None if it is already active."""
    if Alert.objects.filter(cluster=cluster, key=key, cleared_at__isnull=True).exists():
        return None
    try:
        with transaction.atomic():
            alert = Alert.objects.create(
                cluster=cluster,
                endpoint=endpoint,
                kind=kind,
                key=key,
                severity=severity,
                message=message,
                raised_at=timezone.now(),
            )
    except IntegrityError:
        return None  # another worker raised it a moment ago
    deliver(alert)
    return alert


def clear_alert(cluster: Cluster, key: str) -> Alert | None:
    """End condition ``key``: its active alert is cleared and the clearing delivered."""
    alert = Alert.objects.filter(cluster=cluster, key=key, cleared_at__isnull=True).first()
    if alert is None:
        return None
    alert.cleared_at = timezone.now()
    alert.save(update_fields=["cleared_at"])
    deliver(alert, cleared=True)
    return alert


def notify_event(
    cluster: Cluster,
    kind: str,
    severity: str,
    message: str,
    *,
    endpoint: Endpoint | None = None,
) -> Alert:
    """Record and deliver something that happened (no condition to clear later)."""
    now = timezone.now()
    alert = Alert.objects.create(
        cluster=cluster,
        endpoint=endpoint,
        kind=kind,
        key=f"event:{kind}:{now.isoformat()}",
        severity=severity,
        message=message,
        raised_at=now,
        cleared_at=now,
    )
    deliver(alert)
    return alert


def deliver(alert: Alert, *, cleared: bool = False) -> None:
    """Send ``alert`` everywhere alerts go. Never raises: a sweep must not fail on it."""
    prefix = "cleared" if cleared else alert.severity.upper()
    logger.log(
        logging.INFO if cleared else _LOG_LEVELS.get(alert.severity, logging.WARNING),
        "%s [%s] %s: %s",
        prefix,
        alert.cluster.name,
        alert.kind,
        alert.message,
    )
