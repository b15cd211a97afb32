"""A local replicated PostgreSQL cluster: a primary and streaming replicas, for dev and tests.

The one implementation behind ``manage.py local_cluster`` (and so ``make run``), the test
fixtures and the benchmarks. It imports nothing from Django so that test fixtures can use
it before Django is set up. :class:`LocalPostgresCluster` is built in layers, one module
each: :mod:`~endpoints.devstack.pgstate` (base directory, ``cluster.json``, nodes),
:mod:`~endpoints.devstack.pgcontrol` (pg_ctl start/stop/status, errors with the log) and
:mod:`~endpoints.devstack.pgsetup` (initdb, configuration, roles, replica clones); this
module holds the public operations.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import psycopg

from endpoints.core.waiting import poll_until
from endpoints.devstack.pgcontrol import scalar
from endpoints.devstack.pgsetup import NodeSetup
from endpoints.devstack.pgstate import LocalNode
from endpoints.devstack.processes import LocalClusterError, process_alive

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeStatus:
    """What ``pg_ctl status`` and a short connection say about one node."""

    node: LocalNode
    running: bool
    pid: int | None
    in_recovery: bool | None
    error: str | None


def parse_lsn(lsn: str) -> int:
    """Turn a ``pg_lsn`` text such as ``0/3000148`` into a comparable integer."""
    high, _, low = lsn.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def _has_replayed(
    conn: psycopg.Connection[Any], target_lsn: int, replayed: list[str | None]
) -> bool:
    """Whether the replica behind ``conn`` has replayed up to ``target_lsn``.

    Each position read is appended to ``replayed``, for the error message on time-out.
    """
    position = scalar(conn, "SELECT pg_last_wal_replay_lsn()::text")
    replayed.append(position)
    return position is not None and parse_lsn(position) >= target_lsn


class LocalPostgresCluster(NodeSetup):
    """A primary and ``replicas`` streaming replicas, run from ``base_dir`` on ``host``.

    Every method is idempotent and safe to call again after a crash or a partial failure:
    ``start()`` creates what is missing and starts what is stopped, never re-initialising a
    node that was fully created.
    """

    def __repr__(self) -> str:
        return (
            f"LocalPostgresCluster(base_dir={str(self.base_dir)!r}, "
            f"replicas={self.requested_replicas}, host={self.host!r})"
        )

    def start(self, *, timeout_s: float = 60.0) -> None:
        """Create what is missing, start every node that is not running, wait until all serve."""
        self._prepare_base_dir()
        with self._locked():
            state = self._load_or_create_state()
            self._check_matches_request(state)
            self._fill_in_assistant_passwords(state)
            self._prepare_runtime_dirs()
            for node in self.nodes:
                if node.name not in state.initialized:
                    self._create_node(node, timeout_s)
                elif not self._pg_status(node)[0]:
                    logger.info("starting %s on port %s", node.name, node.port)
                    self._pg_start(node, timeout_s)
            self._wait_until_serving(timeout_s)
            self._ensure_assistant_roles(self.primary)

    def stop(self, *, timeout_s: float = 60.0) -> None:
        """Fast-stop every running node, replicas first so they do not chase a gone primary."""
        if not self.exists():
            return
        with self._locked():
            self._stop_all(timeout_s)

    def stop_node(self, node: LocalNode | str, *, mode: str = "fast") -> None:
        """Stop one node with ``pg_ctl -m mode``; ``start()`` brings it back."""
        target = self.node(node) if isinstance(node, str) else node
        with self._locked():
            if self._pg_status(target)[0]:
                self._pg_stop(target, mode=mode, timeout_s=60.0)

    def destroy(self) -> None:
        """Stop every node, then delete the base dir with all data, logs and passwords."""
        if not self.base_dir.exists():
            return
        if not self.exists():
            self._refuse_foreign_dir()
        else:
            with self._locked():
                self._stop_all(timeout_s=60.0)
        shutil.rmtree(self.base_dir)
        self._state = None

    def status(self) -> list[NodeStatus]:
        """Per node: is its postmaster running, and is it in recovery (a replica)?"""
        self._require_state()
        statuses = []
        for node in self.nodes:
            running, pid = self._pg_status(node)
            in_recovery: bool | None = None
            error: str | None = None
            if running:
                try:
                    with psycopg.connect(**self.conninfo(node, connect_timeout=2)) as conn:
                        in_recovery = bool(scalar(conn, "SELECT pg_is_in_recovery()"))
                except psycopg.Error as exc:
                    error = self._redact(str(exc)).strip()
            statuses.append(NodeStatus(node, running, pid, in_recovery, error))
        return statuses

    def wait_for_replay(self, timeout_s: float = 10.0) -> None:
        """Wait until every replica has replayed the primary's current WAL position."""
        deadline = time.monotonic() + timeout_s
        with self._connect(self.primary) as conn:
            target = str(scalar(conn, "SELECT pg_current_wal_lsn()::text"))
        for replica in self.replicas:
            with self._connect(replica, autocommit=True) as conn:
                replayed: list[str | None] = []
                if not poll_until(
                    partial(_has_replayed, conn, parse_lsn(target), replayed),
                    timeout_s=deadline - time.monotonic(),
                    interval_s=0.05,
                ):
                    raise self._node_error(
                        replica,
                        f"has replayed WAL up to {replayed[-1]}, the primary is at {target}; "
                        f"not caught up within {timeout_s}s. Is it streaming? "
                        "(see pg_stat_replication on the primary)",
                    )

    def start_node(self, node: LocalNode | str, *, timeout_s: float = 60.0) -> None:
        """Start one node if it is not running, as its data directory is.

        A former primary killed before a failover comes back as a writable primary: that is
        the split brain that fencing (``endpoints.failover.refuse_writes``) and a rebuild handle.
        """
        target = self.node(node) if isinstance(node, str) else node
        with self._locked():
            if not self._pg_status(target)[0]:
                self._pg_start(target, timeout_s)

    def kill_node(self, node: LocalNode | str) -> int:
        """SIGKILL ``node``'s postmaster, as a crash would; returns its pid.

        Its backends notice the postmaster's death and exit on their own a moment later; the
        listening socket closes at once, so new connections are refused from now on.
        """
        target = self.node(node) if isinstance(node, str) else node
        running, pid = self._pg_status(target)
        if not running or pid is None:
            raise self._node_error(target, "is not running: nothing to kill")
        os.kill(pid, signal.SIGKILL)
        if not poll_until(lambda: not process_alive(pid), timeout_s=10, interval_s=0.01):
            raise self._node_error(target, f"postmaster {pid} survived SIGKILL for 10 s")
        return pid

    def rebuild_as_replica(
        self, node: LocalNode | str, primary: LocalNode | str, *, timeout_s: float = 120.0
    ) -> None:
        """Replace ``node``'s data with a fresh copy of ``primary`` and run it as its replica.

        This is how a fenced former primary rejoins after a failover. A fresh
        ``pg_basebackup -R`` (rather than ``pg_rewind``) works whatever the old node did on
        its own timeline, and these clusters are small. Everything in ``node``'s data
        directory is discarded, including writes it accepted after it was fenced.

        ``primary`` must be running and out of recovery; it is recorded as the cluster's
        primary, so later ``start()`` calls clone any missing node from it and start it first.
        Until a rebuild, the cluster still calls the old primary its primary: ``start()``
        restarts it as it is (a writable primary, fenced in the registry) and, as always,
        never recreates a node that exists.
        """
        target = self.node(node) if isinstance(node, str) else node
        source = self.node(primary) if isinstance(primary, str) else primary
        if target.name == source.name:
            raise LocalClusterError(f"cannot rebuild {target.name} as a replica of itself")
        with self._locked():
            state = self._require_state()
            self._check_serves_writes(source)
            if self._pg_status(target)[0]:
                self._pg_stop(target, mode="immediate", timeout_s=60.0)
            self._wait_for_old_processes(target)
            # Recorded before the data goes: if the copy is interrupted, start() creates the
            # node again from scratch, cloned from the new primary.
            state.primary_node = source.name
            if target.name in state.initialized:
                state.initialized.remove(target.name)
            self._save_state(state)
            if target.data_dir.exists():
                shutil.rmtree(target.data_dir)
            self._create_node(self.node(target.name), timeout_s)
