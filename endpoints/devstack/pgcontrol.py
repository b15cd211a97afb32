"""Running PostgreSQL's tools on the nodes of a local cluster: pg_ctl start, stop, status.

:class:`NodeControl` is the second layer of :class:`~endpoints.devstack.postgres.
LocalPostgresCluster`. It runs every tool as the right OS user with a clean environment,
recovers from what a ``kill -9`` leaves behind (stale lock files, a zombie postmaster,
backends still holding shared memory), and turns every failure into a
:class:`LocalClusterError` that names the node and quotes its log, passwords redacted.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, LiteralString

import psycopg

from endpoints.core.waiting import poll_until
from endpoints.devstack.pgstate import SUPERUSER, ClusterLayout, LocalNode
from endpoints.devstack.processes import (
    LocalClusterError,
    as_pg_user,
    child_env,
    log_tail,
    process_alive,
    processes_in,
)

logger = logging.getLogger(__name__)


def find_pg_bin() -> Path:
    """The PostgreSQL server bin directory: ``$PGWARDEN_PG_BIN``, else the newest installed."""
    override = os.environ.get("PGWARDEN_PG_BIN")
    if override:
        if not (Path(override) / "initdb").is_file():
            raise LocalClusterError(
                f"PGWARDEN_PG_BIN={override} holds no initdb; point it at a PostgreSQL bin "
                "directory such as /usr/lib/postgresql/15/bin"
            )
        return Path(override)
    installed = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda path: _version_key(path.parent.parent.name),
        reverse=True,
    )
    if installed:
        return installed[0].parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise LocalClusterError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin "
        "or on PATH; install them (apt-get install -y postgresql) or set PGWARDEN_PG_BIN"
    )


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def scalar(conn: psycopg.Connection[Any], query: LiteralString, params: Sequence[Any] = ()) -> Any:
    """The first column of the first row of ``query``, or None when it returns no row."""
    row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


class NodeControl(ClusterLayout):
    """Start, stop and inspect nodes with pg_ctl; connect to them; explain failures."""

    def _pg_status(self, node: LocalNode) -> tuple[bool, int | None]:
        if not (node.data_dir / "PG_VERSION").exists():
            return False, None
        result = self._run(
            [str(self._bin("pg_ctl")), "status", "-D", str(node.data_dir)],
            what=f"pg_ctl status of {node.name}",
            check=False,
        )
        if result.returncode != 0:
            return False, None
        match = re.search(r"PID: (\d+)", result.stdout)
        pid = int(match.group(1)) if match else None
        # pg_ctl asks kill(pid, 0), which succeeds on a zombie: a postmaster killed with -9
        # stays one until PID 1 reaps it, and a container's PID 1 may be slow to, or never.
        if pid is not None and not process_alive(pid):
            return False, None
        return True, pid

    def _pg_start(self, node: LocalNode, timeout_s: float) -> None:
        argv = [
            str(self._bin("pg_ctl")),
            "start",
            "-w",
            "-t",
            str(max(1, int(timeout_s))),
            "-D",
            str(node.data_dir),
            "-l",
            str(node.log_file),
        ]
        self._remove_stale_lock_files(node)
        for attempt in range(3):
            result = self._run(argv, what=f"pg_ctl start of {node.name}", check=False)
            if result.returncode == 0:
                return
            # After a kill -9 of a postmaster its backends take a moment to notice and exit;
            # until then the new postmaster refuses the old shared memory block.
            if attempt < 2 and "pre-existing shared memory block" in log_tail(node.log_file, 5):
                time.sleep(1)
                continue
            break
        raise self._node_error(
            node, f"pg_ctl start failed (exit {result.returncode})", result.stdout + result.stderr
        )

    def _pg_stop(self, node: LocalNode, *, mode: str, timeout_s: float) -> None:
        argv = [str(self._bin("pg_ctl")), "stop", "-w", "-t", str(max(1, int(timeout_s)))]
        result = self._run(
            [*argv, "-m", mode, "-D", str(node.data_dir)],
            what=f"pg_ctl stop of {node.name}",
            check=False,
        )
        if result.returncode == 0 or not self._pg_status(node)[0]:
            return
        if mode != "immediate":
            logger.warning(
                "%s did not stop with -m %s; retrying with -m immediate", node.name, mode
            )
            self._pg_stop(node, mode="immediate", timeout_s=timeout_s)
            return
        raise self._node_error(
            node, f"pg_ctl stop failed (exit {result.returncode})", result.stdout + result.stderr
        )

    def _stop_all(self, timeout_s: float) -> None:
        for node in reversed(self.nodes):
            if self._pg_status(node)[0]:
                logger.info("stopping %s", node.name)
                self._pg_stop(node, mode="fast", timeout_s=timeout_s)

    def _remove_stale_lock_files(self, node: LocalNode) -> None:
        # A new postmaster refuses to start while postmaster.pid or its socket's lock file
        # names a process that kill(pid, 0) finds - which includes the zombie of a postmaster
        # killed with -9. Removing them is what PostgreSQL itself does once that process is gone.
        for lock_file in (
            node.data_dir / "postmaster.pid",
            self._socket_dir / f".s.PGSQL.{node.port}.lock",
        ):
            try:
                pid = int(lock_file.read_text().split("\n", 1)[0])
            except (FileNotFoundError, ValueError):
                continue
            if not process_alive(pid):
                # Without postmaster.pid the new postmaster cannot see that backends of the
                # old one still use its shared memory, so first let them exit.
                self._wait_for_old_processes(node)
                logger.info("removing stale %s (pid %s is gone)", lock_file, pid)
                lock_file.unlink(missing_ok=True)

    def _wait_for_old_processes(self, node: LocalNode, timeout_s: float = 10.0) -> None:
        def none_left() -> bool:
            return not processes_in(node.data_dir)

        if poll_until(none_left, timeout_s=timeout_s, interval_s=0.1):
            return
        leftovers = processes_in(node.data_dir)
        if leftovers:
            raise self._node_error(
                node,
                f"cannot restart: processes {leftovers} of its previous, killed server "
                f"still run in {node.data_dir}; kill them and start again",
            )

    def _wait_until_serving(self, timeout_s: float) -> None:
        # pg_ctl -w has waited for each start; this also proves that the application user
        # gets in over TCP, which is how pgwarden will connect.
        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            failures: list[psycopg.Error] = []
            if not poll_until(
                partial(self._accepts_connections, node, failures),
                timeout_s=deadline - time.monotonic(),
                interval_s=0.1,
            ):
                raise self._node_error(
                    node, f"does not accept connections after {timeout_s}s: {failures[-1]}"
                )

    def _accepts_connections(self, node: LocalNode, failures: list[psycopg.Error]) -> bool:
        """One connection as the application user over TCP; a failure is added to ``failures``."""
        try:
            with psycopg.connect(**self.conninfo(node, connect_timeout=2)) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            failures.append(exc)
            # Fail fast, with its log, if the server died instead of getting ready.
            if len(failures) % 10 == 0 and not self._pg_status(node)[0]:
                raise self._node_error(node, f"stopped while starting: {exc}") from None
            return False
        return True

    def _bin(self, tool: str) -> Path:
        if self._pg_bin is None:
            self._pg_bin = find_pg_bin()
        return self._pg_bin / tool

    def _run(
        self,
        argv: Sequence[str],
        *,
        what: str,
        env: dict[str, str] | None = None,
        timeout_s: float = 120.0,
        check: bool = True,
        log_file: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        try:
            result = subprocess.run(
                as_pg_user(argv),
                cwd=self.base_dir,
                env=child_env(env),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise LocalClusterError(self._redact(f"{what} timed out after {timeout_s}s")) from None
        except OSError as exc:
            raise LocalClusterError(self._redact(f"{what} could not run: {exc}")) from None
        if check and result.returncode != 0:
            message = f"{what} failed (exit {result.returncode}):\n{result.stdout}{result.stderr}"
            if log_file is not None:
                message += "\n" + log_tail(log_file)
            raise LocalClusterError(self._redact(message.strip()))
        return result

    def _connect(self, node: LocalNode, **overrides: Any) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(**self.conninfo(node, **overrides))
        except psycopg.Error as exc:
            raise self._node_error(node, f"connection failed: {exc}") from None

    def _connect_superuser(self, node: LocalNode) -> psycopg.Connection[Any]:
        # Over the Unix socket, where the superuser is trusted; it has no password.
        return psycopg.connect(
            host=str(self._socket_dir),
            port=node.port,
            user=SUPERUSER,
            dbname="postgres",
            autocommit=True,
            connect_timeout=10,
        )

    def _node_error(self, node: LocalNode, what: str, output: str = "") -> LocalClusterError:
        message = f"{node.name} ({node.role}, {node.host}:{node.port}) {what}"
        if output.strip():
            message += "\n" + output.strip()
        tail = log_tail(node.log_file)
        message += "\n" + tail
        if "Address already in use" in tail:
            message += (
                f"\nHint: port {node.port} is taken by another process; stop it, or destroy "
                "the cluster so that new ports are chosen."
            )
        return LocalClusterError(self._redact(message))
