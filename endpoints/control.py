"""The control cycle: observe, record, evaluate alerts, react.

One sweep of a cluster (:func:`sweep`) is

1. observe and record: probe every enabled endpoint and store what was seen
   (:func:`endpoints.health.probe_and_record`);
2. evaluate the alert conditions on those observations (:func:`endpoints.alerts.evaluate`);
   alerts never cost a reaction: a failure here is logged and the cycle goes on;
3. react (:func:`react`): a fenced endpoint that answers as a writable primary (split
   brain) is made to refuse writes when the cluster allows it
   (:func:`endpoints.failover.refuse_writes`), and a primary down for
   ``failure_threshold`` consecutive probes hands over to automatic failover
   (:func:`endpoints.failover.on_primary_down`). Whatever a reaction raises is
   logged: the observations are recorded already, and the next sweep tries again.

Scheduled sweeps and an operator's "check now" run under the cluster's sweep lock
(:func:`sweep_exclusively`, :func:`sweep_now`), extended while reacting so that no
sweep observes a failover half done. This is the only module that knows health,
alerts and failover together; none of them imports it or each other's cycle.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from endpoints import alerts, failover, health
from endpoints.core.observations import Observation
from endpoints.core.vocabulary import Role
from endpoints.health.scheduling import SweepReport
from endpoints.models import Cluster, Endpoint

if TYPE_CHECKING:
    import redis

logger = logging.getLogger("pgwarden.control")


def sweep(cluster: Cluster) -> list[Observation]:
    """Probe every enabled endpoint of ``cluster``, record, alert and react; no lock.

    Scheduled sweeps go through :func:`sweep_exclusively`.
    """
    observations = observe_and_record(cluster)
    react(cluster, observations)
    return observations


def observe_and_record(cluster: Cluster) -> list[Observation]:
    """Steps 1 and 2 of the cycle: probes, records, topology notice, alerts."""
    observations = health.probe_and_record(cluster)
    try:
        alerts.evaluate(cluster, observations)
    except Exception:
        # Alerts must never cost a failover: log and carry on.
        logger.exception("evaluating the alerts of cluster %s failed", cluster.name)
    return observations


def sweep_exclusively(cluster_id: int, *, client: redis.Redis | None = None) -> SweepReport:
    """Sweep the cluster unless another sweep of it holds the lock; then skip, not wait."""
    return sweep_now(cluster_id, client=client)[0]


def sweep_now(
    cluster_id: int, *, client: redis.Redis | None = None
) -> tuple[SweepReport, list[Observation]]:
    """:func:`sweep_exclusively`, with the observations (an operator's "check now")."""
    started = time.monotonic()
    cluster = Cluster.objects.filter(pk=cluster_id).first()
    if cluster is None:
        return SweepReport.skipped(cluster_id, "the cluster was removed"), []
    lock, skipped_because = health.take_sweep_lock(cluster, client=client)
    if lock is None:
        return SweepReport.skipped(cluster_id, skipped_because), []
    try:
        observations = observe_and_record(cluster)
        if needs_reaction(cluster, observations):
            health.extend_for_reaction(lock)
            react(cluster, observations)
    finally:
        health.release_sweep_lock(lock, cluster)
    return SweepReport.of(cluster_id, observations, started), observations


# Reactions


def react(cluster: Cluster, observations: list[Observation]) -> None:
    """Step 3: make a split-brain endpoint refuse writes; start failover."""
    if cluster.fence_writes:
        for endpoint in endpoints_to_refuse_writes(observations):
            _refuse_writes(endpoint)
    if cluster.fails_over_automatically and primary_is_down(cluster, observations):
        _fail_over(cluster)


def endpoints_to_refuse_writes(observations: Iterable[Observation]) -> list[Endpoint]:
    """Fenced endpoints answering as writable primaries that do not refuse writes yet.

    ``read_only`` on: already refused on an earlier sweep (the setting persists).
    """
    return [o.endpoint for o in observations if o.writable_while_fenced and not o.result.read_only]


def primary_is_down(cluster: Cluster, observations: Iterable[Observation]) -> bool:
    """The registered primary failed ``failure_threshold`` consecutive probes."""
    return any(
        o.endpoint.role == Role.PRIMARY and o.consecutive_failures >= cluster.failure_threshold
        for o in observations
    )


def needs_reaction(cluster: Cluster, observations: list[Observation]) -> bool:
    """Whether :func:`react` would do anything (the sweep lock is extended first)."""
    return (cluster.fails_over_automatically and primary_is_down(cluster, observations)) or (
        cluster.fence_writes and bool(endpoints_to_refuse_writes(observations))
    )


# Whatever failover raises is logged: the sweep's observations are recorded already, and
# the next sweep tries again.


def _refuse_writes(endpoint: Endpoint) -> None:
    try:
        failover.refuse_writes(endpoint)
    except Exception:
        logger.exception("making fenced endpoint %s refuse writes failed", endpoint)


def _fail_over(cluster: Cluster) -> None:
    try:
        failover.on_primary_down(cluster)
    except Exception:
        logger.exception("automatic failover of cluster %s failed", cluster)
