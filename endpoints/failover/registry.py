"""What failover changes in the control database: who is primary, who is fenced, pauses.

Each change is one transaction, followed (on commit) by a topology change notice, so every
router sends writes to the new primary, and no traffic to a fenced endpoint, within a
second. ``.update()`` sends no signals: the notice is announced here explicitly.
"""

from __future__ import annotations

import logging

from django.db import transaction
from django.utils import timezone

from endpoints.core.vocabulary import Role, State
from endpoints.models import Cluster, Endpoint
from endpoints.routing import topology

logger = logging.getLogger("pgwarden.failover")


def record_new_primary(cluster: Cluster, new: Endpoint, fenced_reason: str) -> list[str]:
    """Fence every other registered primary and make ``new`` the primary, atomically.

    Returns the names of the primaries demoted (and fenced).
    """
    now = timezone.now()
    with transaction.atomic():
        # Demoted first: the one-enabled-primary constraint is checked row by row.
        others = Endpoint.objects.filter(cluster=cluster, role=Role.PRIMARY).exclude(pk=new.pk)
        demoted = list(others.values_list("name", flat=True))
        others.update(
            role=Role.REPLICA, state=State.FENCED, fenced_reason=fenced_reason, updated_at=now
        )
        Endpoint.objects.filter(pk=new.pk).update(
            role=Role.PRIMARY,
            state=State.HEALTHY,
            in_recovery=False,
            role_mismatch=False,
            fenced_reason="",
            replication_lag_bytes=None,
            replication_lag_s=None,
            consecutive_failures=0,
            last_error="",
            # A primary streams from nothing; as a replica again, sweeps will say from what.
            upstream=None,
            upstream_observed_at=None,
            updated_at=now,
        )
        transaction.on_commit(topology.notify_changed)
    new.refresh_from_db()
    return demoted


def fence(endpoint: Endpoint, reason: str) -> None:
    """Mark ``endpoint`` fenced (no traffic until an operator re-admits it), saying why."""
    with transaction.atomic():
        Endpoint.objects.filter(pk=endpoint.pk).update(
            state=State.FENCED, fenced_reason=reason, updated_at=timezone.now()
        )
        transaction.on_commit(topology.notify_changed)


def clear_fence(endpoint: Endpoint) -> None:
    """Re-admit ``endpoint`` as a replica of unknown health: the next sweep judges it."""
    with transaction.atomic():
        Endpoint.objects.filter(pk=endpoint.pk).update(
            state=State.UNKNOWN,
            fenced_reason="",
            in_recovery=True,
            role_mismatch=False,
            consecutive_failures=0,
            updated_at=timezone.now(),
        )
        transaction.on_commit(topology.notify_changed)
    endpoint.refresh_from_db()


def pause(cluster: Cluster, reason: str = "") -> Cluster:
    """Pause automatic failover of ``cluster`` (maintenance); checks and alerts go on.

    Idempotent: pausing a paused cluster keeps its original time and updates the reason
    only when one is given. Returns the cluster as stored.
    """
    reason = " ".join(reason.split())[: Cluster._meta.get_field("pause_reason").max_length]
    with transaction.atomic():
        locked = Cluster.objects.select_for_update().get(pk=cluster.pk)
        if not locked.paused:
            locked.paused, locked.paused_at = True, timezone.now()
        if reason or not locked.pause_reason:
            locked.pause_reason = reason
        locked.save(update_fields=["paused", "paused_at", "pause_reason"])
    logger.warning("automatic failover of %s %s", locked.name, locked.pause_text())
    return locked


def resume(cluster: Cluster) -> Cluster:
    """Resume automatic failover of ``cluster``; the next sweep may fail over at once."""
    with transaction.atomic():
        locked = Cluster.objects.select_for_update().get(pk=cluster.pk)
        was = locked.pause_text()
        locked.paused, locked.paused_at, locked.pause_reason = False, None, ""
        locked.save(update_fields=["paused", "paused_at", "pause_reason"])
    if was:
        logger.warning("automatic failover of %s resumed (it was %s)", locked.name, was)
    return locked
