"""The audit trail of a failover or switchover: its event, its steps, its alerts.

Every step is appended to the :class:`~endpoints.models.FailoverEvent` and saved at once,
so the trail survives a crash of the worker, and the lock is renewed after each (a step
lost its lock: the procedure stops). The start and the end of a procedure each send an
alert; messages are redacted before they are stored or sent.
"""

from __future__ import annotations

import logging

from django.utils import timezone

from endpoints.alerts import notify_event
from endpoints.core.crypto import redact
from endpoints.core.vocabulary import AlertKind, AlertSeverity, FailoverKind, FailoverOutcome
from endpoints.failover.lock import ClusterLock
from endpoints.failover.survey import Survey
from endpoints.models import Endpoint, FailoverEvent

logger = logging.getLogger("pgwarden.failover")


class Audit:
    """Appends steps to the event, saving after each so the trail survives a crash."""

    def __init__(self, event: FailoverEvent, lock: ClusterLock) -> None:
        self.event = event
        self.lock = lock

    def step(self, step: str, ok: bool, detail: str) -> None:
        entry = {"at": timezone.now().isoformat(), "step": step, "ok": ok, "detail": redact(detail)}
        self.event.steps = [*self.event.steps, entry]
        self.event.save(update_fields=["steps"])
        (logger.info if ok else logger.error)("%s: %s: %s", self.event.cluster.name, step, detail)
        self.lock.renew()

    def finish(
        self, outcome: FailoverOutcome, message: str, *, severity: AlertSeverity
    ) -> FailoverEvent:
        event = self.event
        event.outcome = outcome
        event.finished_at = timezone.now()
        if outcome != FailoverOutcome.SUCCEEDED:
            event.reason = redact(
                f"{event.reason}. {event.get_outcome_display().capitalize()}: {message}"
            )
        event.save(update_fields=["outcome", "finished_at", "reason"])
        notify_event(
            event.cluster,
            AlertKind.FAILOVER,
            severity,
            redact(f"{procedure_name(event)} of {event.cluster.name} {outcome}: {message}"),
            endpoint=event.new_primary or event.old_primary,
        )
        return event


def start_event(survey: Survey, kind: FailoverKind, reason: str, lock: ClusterLock) -> Audit:
    """Create the event (in progress) and say so in an alert; its audit trail."""
    old = survey.primary
    event = FailoverEvent.objects.create(
        cluster=survey.cluster,
        kind=kind,
        old_primary=old,
        old_primary_name=old.name if old is not None else "",
        reason=redact(reason),
        started_at=timezone.now(),
    )
    notify_event(
        survey.cluster,
        AlertKind.FAILOVER,
        AlertSeverity.WARNING,
        redact(f"{procedure_name(event)} of {survey.cluster.name} started: {reason}"),
        endpoint=old,
    )
    return Audit(event, lock)


def procedure_name(event: FailoverEvent) -> str:
    """ "automatic failover", "manual failover" or "switchover"."""
    if event.kind == FailoverKind.SWITCHOVER:
        return "switchover"
    return f"{event.get_kind_display()} failover"


def event_label(event: FailoverEvent) -> str:
    """``automatic failover #12``: how fence reasons and messages name an event."""
    return f"{procedure_name(event)} #{event.pk}"


def fenced_reason(event: FailoverEvent, new_primary: Endpoint) -> str:
    """Why the old primary is fenced, and what to do about it."""
    return (
        f"former primary, fenced by {event_label(event)} at {event.started_at:%Y-%m-%d %H:%M:%S} "
        f"when {new_primary.name} was promoted: rebuild it as a replica of {new_primary.name}, "
        "then re-admit it"
    )
