"""Health: probe every enabled endpoint of a cluster at once, and record what was seen.

A sweep (:func:`endpoints.control.sweep`, the control cycle)

1. probes every enabled endpoint concurrently, the whole sweep bounded by the
   cluster's ``probe_timeout_s``, so a hung endpoint costs one probe timeout and
   delays no other. Connection set-ups take turns so that CPU is spent on some
   of them finishing in time rather than all of them finishing late
   (:func:`endpoints.health.probe.sweep_endpoints`, in :func:`probe_order`); endpoints
   the machine had no time for are left as they were and go first next sweep.
   Probes that overran the deadline because this process was starved of CPU are
   recorded, but their failures not counted (:func:`sweep_was_starved`);
2. stores one HealthCheck row per endpoint (with its health score) and updates
   each Endpoint's observed fields: recovery, WAL position, latency, lag in
   seconds and in bytes behind the primary's WAL position from the same sweep,
   consecutive failures, role mismatch, health score and state (the rules and
   the score formula are in :mod:`endpoints.core.scoring`). When the registered
   primary answered as a primary, every replica endpoint also gets ``upstream``
   (that primary if its ``pg_stat_replication`` shows the replica streaming, by
   name and address: :func:`endpoints.health.upstream.streaming_from_primary`; else
   NULL) and ``upstream_observed_at``; when it did not, both stay as the last
   sweep in which it answered left them, which is what automatic failover
   relies on (only a replica observed streaming from the primary is promoted);
3. bumps the topology version when something routing depends on changed (see
   :func:`routing_relevant_change`): every process reloads its snapshot on a
   bump, so a sweep that saw only latency jitter must not cost each of them a
   reload every second. Snapshots are reloaded every 30 s in any case
   (``topology.MAX_SNAPSHOT_AGE_S``), which bounds how stale the probe latency
   seen by the ``nearest`` and ``response_time`` strategies can get;
4. evaluates the alert conditions (:func:`endpoints.alerts.evaluate`), and
5. reacts: a fenced endpoint that answers as a writable primary (split brain) is
   made to refuse writes when the cluster allows it, and a primary down for
   ``failure_threshold`` consecutive probes hands over to automatic failover.

Steps 1-3 are this package's (:func:`probe_and_record`); 4 and 5 are the control
cycle's (:mod:`endpoints.control`), the only module that knows health, alerts and
failover together. This package imports neither alerts nor failover.

Modules: :mod:`~endpoints.health.probe` (one round trip, bounded by a timeout),
:mod:`~endpoints.health.upstream` (who streams from the primary),
:mod:`~endpoints.health.observations` (what a probe means, pure),
:mod:`~endpoints.health.recording` (HealthCheck rows, Endpoint status, retention),
:mod:`~endpoints.health.scheduling` (dispatch claims, the sweep lock).

Scheduling (:func:`endpoints.control.sweep_exclusively`, :func:`claim_due_sweeps`):
Celery beat runs a dispatcher every second, which claims in Redis, per cluster, the right to
dispatch its next sweep once ``check_interval_s`` has elapsed (so restarting
beat, or several dispatchers, never doubles a sweep); each sweep holds a Redis
lock per cluster, so sweeps of one cluster never overlap whatever the number of
workers and machines, and a sweep that finds the lock taken is skipped, not
queued. The retention task (:func:`prune_health_checks`) deletes old
HealthCheck rows in batches.

Cost: each probe opens a fresh connection, which takes about 3 ms of the
sweeping process's CPU (libpq's SCRAM key derivation, mostly), all on the one
thread that runs the probes' event loop: a sweep of 500 endpoints costs about
1.5 CPU-seconds there, so past a few hundred endpoints per cluster raise
``check_interval_s`` or split the cluster. ``make bench`` shows what happens
when the machine runs out of CPU before the probe timeout: the sweep still ends
on time, with some endpoints left for the next one (logged).
"""

from endpoints.core.observations import Observation, ProbeResult, WalSender
from endpoints.health.observations import (
    SCORE_CHANGE_TO_PUBLISH,
    STARVED_OVERRUN_MIN_S,
    STARVED_OVERRUN_SHARE,
    answering_primary,
    is_suspect,
    next_state,
    observe,
    primary_lsn_of,
    probe_order,
    replication_lag_bytes,
    routing_relevant_change,
    streams_seen,
    sweep_was_starved,
)
from endpoints.health.recording import (
    PRUNE_BATCH_SIZE,
    RESOLVE_WAIT_S,
    PruneReport,
    probe_and_record,
    prune_health_checks,
)
from endpoints.health.scheduling import (
    DISPATCH_TICK_S,
    REACT_LOCK_TTL_S,
    SWEEP_LOCK_MARGIN_S,
    SWEEP_LOCK_PROBE_TIMEOUTS,
    SweepReport,
    claim_due_sweeps,
    dispatch_claim_ttl_s,
    extend_for_reaction,
    release_sweep_lock,
    sweep_expiry_s,
    sweep_lock,
    take_sweep_lock,
)

__all__ = [
    "DISPATCH_TICK_S",
    "PRUNE_BATCH_SIZE",
    "REACT_LOCK_TTL_S",
    "RESOLVE_WAIT_S",
    "SCORE_CHANGE_TO_PUBLISH",
    "STARVED_OVERRUN_MIN_S",
    "STARVED_OVERRUN_SHARE",
    "SWEEP_LOCK_MARGIN_S",
    "SWEEP_LOCK_PROBE_TIMEOUTS",
    "Observation",
    "ProbeResult",
    "PruneReport",
    "SweepReport",
    "WalSender",
    "answering_primary",
    "claim_due_sweeps",
    "dispatch_claim_ttl_s",
    "extend_for_reaction",
    "is_suspect",
    "next_state",
    "observe",
    "primary_lsn_of",
    "probe_and_record",
    "probe_order",
    "prune_health_checks",
    "release_sweep_lock",
    "replication_lag_bytes",
    "routing_relevant_change",
    "streams_seen",
    "sweep_expiry_s",
    "sweep_lock",
    "sweep_was_starved",
    "take_sweep_lock",
]
