"""The alert store: alerts raised once per condition, cleared when it ends, kept as history.

At most one alert per condition key is active in a cluster (a database constraint),
so a condition that persists over many sweeps fires once. :func:`evaluate` raises
the conditions that started with a sweep and clears those that ended;
:func:`notify_event` records something that happened (already cleared). Every
raised, cleared and event alert is delivered (:func:`endpoints.alerts.delivery.deliver`).
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.utils import timezone

from endpoints.alerts.conditions import EVENT_KEY_PREFIX, conditions, is_evaluated_key
from endpoints.alerts.delivery import deliver
from endpoints.core.observations import Observation
from endpoints.models import Alert, Cluster, Endpoint


@dataclass(frozen=True)
class Evaluation:
    raised: list[Alert]
    cleared: list[Alert]


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
        key=f"{EVENT_KEY_PREFIX}{kind}:{now.isoformat()}",
        severity=severity,
        message=message,
        raised_at=now,
        cleared_at=now,
    )
    deliver(alert)
    return alert


def evaluate(cluster: Cluster, observations: list[Observation]) -> Evaluation:
    """Raise the conditions that started with this sweep, clear those that ended."""
    holding = {condition.key: condition for condition in conditions(cluster, observations)}
    active = set(
        Alert.objects.filter(cluster=cluster, cleared_at__isnull=True).values_list("key", flat=True)
    )
    evaluation = Evaluation(raised=[], cleared=[])
    for key, condition in holding.items():
        if key in active:
            continue  # raised by an earlier sweep: no storm
        alert = raise_alert(
            cluster,
            condition.kind,
            key,
            condition.severity,
            condition.message,
            endpoint=condition.endpoint,
        )
        if alert is not None:
            evaluation.raised.append(alert)
    for key in sorted(active - holding.keys()):
        if is_evaluated_key(key):
            alert = clear_alert(cluster, key)
            if alert is not None:
                evaluation.cleared.append(alert)
    return evaluation
