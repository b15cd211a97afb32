"""Failover, switchover and fencing: decide, promote, re-point, fence, one at a time.

**Automatic failover** (:func:`on_primary_down`, called by the health sweep once the
primary failed ``failure_threshold`` consecutive probes) and **manual failover**
(:func:`fail_over`) run the same procedure, each step recorded with its time in the
:class:`~endpoints.models.FailoverEvent` (saved after every step, so the audit trail
survives a crash of the worker):

1. *Lock.* A Redis lock per cluster (:func:`lock_key`), taken without waiting: a second
   worker, on this machine or another, gets :class:`FailoverInProgress` (and
   ``on_primary_down`` returns ``None``). Its TTL (:data:`LOCK_TTL_S`) is renewed after
   every step, so a worker that dies mid-failover blocks the cluster for one TTL at most.
   Without Redis there is no failover: two workers could otherwise promote two replicas.
2. *Plan.* Every enabled, unfenced replica (and the primary, once more) is probed
   concurrently and :func:`choose_failover_candidate` decides. Nothing qualifies: the
   event is *aborted*, saying why, and a critical alert goes out.
3. *Fence the old primary's writes*, only if it still answers as a writable primary
   (a manual failover of a live primary): see :func:`refuse_writes`.
4. *Promote* the candidate (``pg_promote(wait => true)``) and verify with a new
   connection that it left recovery.
5. *Registry*, one transaction: the old primary becomes a *fenced* replica (still
   enabled, so probes keep watching it for a split brain), the candidate the primary;
   then the topology version is bumped, so every router sends writes to it within a
   second. This comes before re-pointing the replicas on purpose: writes need only the
   new primary, and the replicas may take seconds to reconnect.
6. *Re-point* every other enabled replica: its replication slot (``primary_slot_name``)
   is created on the new primary first, then only host and port of its own
   ``primary_conninfo`` are rewritten (``ALTER SYSTEM`` + ``pg_reload_conf()``; PostgreSQL
   13+ applies it on reload), so no replication credentials are needed here: each replica
   keeps the user and password it already had. Then each must be seen streaming from the
   new primary (``pg_stat_wal_receiver``) within :data:`STREAM_WAIT_S`.
7. *Outcome* ``succeeded`` and an alert. A promotion cannot be undone, so a replica that
   does not follow does not turn a done failover into a failed one: its step is recorded
   as failed and a critical alert asks for it to be rebuilt.

A failure before the promotion leaves the registry as it was (outcome *failed*, critical
alert). A failure *during* it (``pg_promote`` timed out or errored, or recovery did not
end) fences the candidate in the registry: it may still finish promoting, and a server
that might be a second primary must get no traffic.

**Switchover** (:func:`switchover`) is for a healthy primary and loses nothing: the old
primary refuses new writes and its client sessions are ended, its final WAL position is
read, the candidate must replay up to it within ``timeout_s`` (else the old primary is
made writable again and the switchover is aborted), then steps 4-7. The old primary stays
up, read-only and fenced until it is rebuilt as a replica (``manage.py local_cluster
rebuild NODE`` for the local cluster) and re-admitted (:func:`readmit`).

**Candidate choice.** Eligible: enabled, answering, in recovery, not fenced, *observed
streaming from the cluster's current primary*, and no more than ``max_failover_lag_bytes``
behind the most advanced WAL position known: the highest of the primary's (live when it
answers, else the last one the registry recorded) and of every answering replica's
received and replayed positions. The old primary is usually gone, and the WAL a replica
*received* proves how far the primary got, even if no replica replayed it (a replica with
replay paused receives on). The most WAL replayed wins, then ``promotion_priority``, then
weight, then the name.

*Observed streaming* is seen from the primary's side, which a server that merely answers
probes as a replica cannot forge (:mod:`endpoints.health.upstream`): the primary's
``pg_stat_replication`` must show a walsender in state ``streaming`` whose
``application_name`` is the endpoint's registered name and whose ``client_addr`` is one of
the addresses the endpoint's registered host resolves to. When the primary answers as a
primary (a manual failover of a live primary, a switchover) its walsenders are read live,
by the same probe; when it does not (automatic failover, a manual failover of a dead
primary), what sweeps recorded counts: ``Endpoint.upstream``, which every sweep in which
the primary answered sets (the primary, or NULL) and no other sweep touches, so the last
observation made while the primary was alive decides (the plan gives its age). An
endpoint registered at a host of someone's choosing, or under a name that is not its
walsender's, is therefore never promoted, and the real replicas are never re-pointed at
it. Nor is a replica never seen streaming: one added after the primary went down, a
cascading standby (it streams from another replica), every replica when pgwarden's role
lacks ``pg_read_all_stats`` (``client_addr`` is then NULL: the plan says so), and, just
after a failover, every replica until a sweep has seen it stream from the new primary
(sweeps run every second; replicas reconnect within ``wal_retrieve_retry_interval``).
Host names are resolved by pgwarden (``getaddrinfo``, cached for a minute): whoever
controls a name's DNS controls the addresses it matches, so register endpoints by IP
address, or under names whose DNS you trust.

**What the database role needs.** pgwarden connects to every endpoint with its registered
user. In production that role needs: ``EXECUTE`` on ``pg_promote(boolean, integer)``;
``ALTER SYSTEM`` on the parameters ``primary_conninfo`` and ``default_transaction_read_only``
(``GRANT ALTER SYSTEM ON PARAMETER ...``, PostgreSQL 15; before, superusers only) and ``EXECUTE`` on
``pg_reload_conf()``; membership in ``pg_read_all_settings`` (to read ``primary_conninfo``),
``pg_read_all_stats`` (``pg_stat_wal_receiver``, and ``client_addr`` and ``state`` in
``pg_stat_replication``: without it no replica is seen streaming, so none is promoted) and
``pg_signal_backend`` (to end client sessions); the ``REPLICATION`` attribute, or ``EXECUTE`` on
``pg_create_physical_replication_slot``, to create slots. Or be a superuser, as the local
cluster's application role is.

**Assumptions.** PostgreSQL 14 or later (``primary_conninfo`` applied on reload: 13;
``pg_terminate_backend`` with a timeout: 14). For clusters not run by pgwarden: replicas
reach the new primary at its registered host and port, with the replication credentials
already in their own ``primary_conninfo``; ``recovery_target_timeline`` is ``latest``
(the default), so they follow the new timeline. Each replica's walsender must carry the
name it is registered under: set ``cluster_name`` to that name on the replica, or
``application_name`` in its ``primary_conninfo`` (which wins over ``cluster_name``; with
neither, every walsender is called ``walreceiver`` and no replica can be promoted). And
each replica must connect to the primary over TCP from an address its registered host
resolves to: not through a Unix socket, nor through NAT or a proxy that changes the
source address. pgwarden's own cluster (``manage.py local_cluster``) sets ``cluster_name``
to the node's name and registers it under that name. ``default_transaction_read_only`` stops
pgwarden's routed writes and well-behaved clients, not a superuser who turns it off again
(nor can ``pg_signal_backend`` end a superuser's sessions): with synchronous replication,
an old primary cut off from its standbys cannot acknowledge a commit at all. Note that
``ALTER SYSTEM SET primary_conninfo`` carries the replica's replication password in its
text, as ``pg_basebackup -R`` already wrote it to ``postgresql.auto.conf``.

**Where each part lives.** The candidate choice is pure, in
:mod:`endpoints.core.candidates`; :mod:`.survey` gathers what it decides on,
:mod:`.decision` plans and explains, :mod:`.lock` holds the cluster (through
:mod:`endpoints.coordination`), :mod:`.audit` records, :mod:`.server` acts on PostgreSQL,
:mod:`.registry` on the control database, :mod:`.procedures` runs the steps in order, and
:mod:`.errors` says what went wrong. This package re-exports the public API.
"""

from __future__ import annotations

from endpoints.core.candidates import (
    CandidateState,
    FailoverPlan,
    choose_failover_candidate,
    format_lsn,
)
from endpoints.failover.decision import describe_plan, plan_failover
from endpoints.failover.errors import (
    FailoverError,
    FailoverInProgress,
    NotReadmittable,
    PrimaryUnavailable,
    UnknownEndpoint,
)
from endpoints.failover.lock import LOCK_TTL_S, lock_key
from endpoints.failover.procedures import (
    ABORTED_RETRY_S,
    STREAM_WAIT_S,
    fail_over,
    on_primary_down,
    readmit,
    switchover,
)
from endpoints.failover.registry import pause, resume
from endpoints.failover.server import (
    PROMOTE_WAIT_S,
    PROMOTION_VERIFY_S,
    READ_ONLY_WAIT_S,
    TERMINATE_WAIT_MS,
    allow_writes,
    refuse_writes,
)

__all__ = [
    "ABORTED_RETRY_S",
    "LOCK_TTL_S",
    "PROMOTE_WAIT_S",
    "PROMOTION_VERIFY_S",
    "READ_ONLY_WAIT_S",
    "STREAM_WAIT_S",
    "TERMINATE_WAIT_MS",
    "CandidateState",
    "FailoverError",
    "FailoverInProgress",
    "FailoverPlan",
    "NotReadmittable",
    "PrimaryUnavailable",
    "UnknownEndpoint",
    "allow_writes",
    "choose_failover_candidate",
    "describe_plan",
    "fail_over",
    "format_lsn",
    "lock_key",
    "on_primary_down",
    "pause",
    "plan_failover",
    "readmit",
    "refuse_writes",
    "resume",
    "switchover",
]
