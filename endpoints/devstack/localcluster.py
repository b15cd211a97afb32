"""A local replicated PostgreSQL cluster and a local Redis, for development and tests.

The one implementation behind ``manage.py local_cluster`` (and so ``make run``), the test
fixtures and the benchmarks. It imports nothing from Django so that test fixtures can use it
before Django is set up.

Layout of a cluster's base directory::

    cluster.json        ports, names and passwords (mode 0600); reused by every later start
    cluster.lock        serialises start/stop/destroy between processes (e.g. xdist workers)
    sockets/            Unix sockets of every node (mode 0700: local connections are trusted)
    log/<node>.log      server log of each node, appended to by every start
    primary/, replica1/, ...  data directories
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, LiteralString
from urllib.parse import urlsplit

import psycopg
from psycopg import sql

from endpoints.core.purposes import (
    ASSISTANT_ROLE,
    ASSISTANT_WRITE_ROLE,
    assistant_role_sql,
    quote_literal,
)

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

# PostgreSQL refuses to run as root, so when we are root its tools run as this OS user.
PG_OS_USER = "postgres"
SUPERUSER = "postgres"
APP_DBNAME = "app"
APP_USER = "pgwarden"
REPLICATION_USER = "replicator"

STATE_FILE = "cluster.json"
LOCK_FILE = "cluster.lock"
# What a base directory may hold before cluster.json exists: our lock file, and the Redis
# directory that ``manage.py local_cluster`` keeps beside the cluster. Anything else means the
# directory is not ours, and we will neither chown it nor delete it.
_PRE_INIT_ENTRIES = frozenset({LOCK_FILE, "redis"})
# sun_path is 108 bytes on Linux, including the trailing NUL.
_MAX_SOCKET_PATH = 107
_REDACTED = "********"


class LocalClusterError(Exception):
    """A local cluster or Redis operation failed; the message says what, where, and the log."""


@dataclass(frozen=True)
class LocalNode:
    """One PostgreSQL server of the local cluster."""

    name: str
    role: str
    host: str
    port: int
    data_dir: Path
    log_file: Path


@dataclass(frozen=True)
class NodeStatus:
    """What ``pg_ctl status`` and a short connection say about one node."""

    node: LocalNode
    running: bool
    pid: int | None
    in_recovery: bool | None
    error: str | None


@dataclass
class _ClusterState:
    """The persisted part of a cluster: chosen once, at the first start."""

    host: str
    dbname: str
    user: str
    password: str
    replication_password: str
    # Node name -> port, primary first.
    ports: dict[str, int]
    # The MCP server's least-privilege roles (see endpoints.core.purposes); empty in a
    # cluster.json from before they existed, filled in at the next start.
    assistant_password: str = ""
    assistant_write_password: str = ""
    # Nodes whose creation finished; a node missing here is (re)created from scratch.
    initialized: list[str] = field(default_factory=list)
    # The node replicas are cloned from, recorded by a rebuild after a failover; empty
    # means the first node of ``ports``.
    primary_node: str = ""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port free on ``host`` right now (the kernel picks it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def parse_lsn(lsn: str) -> int:
    """Turn a ``pg_lsn`` text such as ``0/3000148`` into a comparable integer."""
    high, _, low = lsn.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def default_cluster_dir() -> Path:
    """``$PGWARDEN_LOCAL_CLUSTER_DIR``, else ``<project root>/var/local-cluster``."""
    override = os.environ.get("PGWARDEN_LOCAL_CLUSTER_DIR")
    return Path(override) if override else PROJECT_ROOT / "var" / "local-cluster"


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


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _pg_os_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PG_OS_USER)
    except KeyError:
        raise LocalClusterError(
            f"running as root, but the OS user {PG_OS_USER!r} does not exist; PostgreSQL "
            "refuses to run as root. Install the postgresql package (it creates the user) or "
            "run as an unprivileged user"
        ) from None


def _as_pg_user(argv: Sequence[str]) -> list[str]:
    if _running_as_root():
        return ["runuser", "-u", PG_OS_USER, "--", *argv]
    return list(argv)


def _chown_to_pg_user(path: Path) -> None:
    if _running_as_root():
        user = _pg_os_user()
        os.chown(path, user.pw_uid, user.pw_gid)


def _child_env(extra: dict[str, str] | None) -> dict[str, str]:
    # libpq reads many PG* variables (PGHOST, PGSSLMODE, PGSERVICE...); the caller's must
    # not redirect our tools to another server or change how they connect.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env.update(extra or {})
    return env


def _log_tail(log_file: Path, lines: int = 20) -> str:
    try:
        with log_file.open("rb") as handle:
            handle.seek(max(0, log_file.stat().st_size - 16_384))
            text = handle.read().decode(errors="replace")
    except FileNotFoundError:
        return f"log file {log_file} does not exist"
    except OSError as exc:
        return f"cannot read log file {log_file}: {exc}"
    tail = text.splitlines()[-lines:]
    if not tail:
        return f"log file {log_file} is empty"
    return f"last lines of {log_file}:\n" + "\n".join(f"  {line}" for line in tail)


def _first_blocking_dir(path: Path, uid: int, gids: set[int]) -> Path | None:
    """The first directory above ``path`` that ``uid`` may not traverse, by its mode bits."""
    for parent in reversed(path.parents):
        st = parent.stat()
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid in gids:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return parent
    return None


def _conf_value(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _conf_file(settings: dict[str, str]) -> str:
    return "".join(f"{name} = {_conf_value(value)}\n" for name, value in settings.items())


def _write_private_file(path: Path, text: str, *, for_pg_user: bool) -> None:
    """Write ``text`` with mode 0600 via a rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(text)
    if for_pg_user:
        _chown_to_pg_user(tmp)
    os.replace(tmp, path)


def _processes_in(directory: Path) -> list[int]:
    """Live processes whose working directory is ``directory`` (PostgreSQL's chdir to it)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    wanted = os.path.realpath(directory)
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.readlink(entry / "cwd") == wanted and _process_alive(int(entry.name)):
                found.append(int(entry.name))
    return found


class LocalPostgresCluster:
    """A primary and ``replicas`` streaming replicas, run from ``base_dir`` on ``host``.

    Every method is idempotent and safe to call again after a crash or a partial failure:
    ``start()`` creates what is missing and starts what is stopped, never re-initialising a
    node that was fully created.
    """

    def __init__(self, base_dir: Path, *, replicas: int = 2, host: str = "127.0.0.1") -> None:
        if replicas < 0:
            raise ValueError(f"replicas must be >= 0, not {replicas}")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(
                f"host must be an IP address such as 127.0.0.1, not {host!r}"
            ) from None
        # Absolute, because PostgreSQL's tools run with the base dir as their working dir.
        self.base_dir = Path(base_dir).resolve()
        self.host = host
        self.requested_replicas = replicas
        self._state: _ClusterState | None = None
        self._pg_bin: Path | None = None

    def __repr__(self) -> str:
        return (
            f"LocalPostgresCluster(base_dir={str(self.base_dir)!r}, "
            f"replicas={self.requested_replicas}, host={self.host!r})"
        )

    def exists(self) -> bool:
        """Whether this base dir holds a cluster (created by an earlier ``start()``)."""
        return (self.base_dir / STATE_FILE).is_file()

    @property
    def nodes(self) -> list[LocalNode]:
        """Every node, the primary first (so it is started before, and stopped after, the rest)."""
        state = self._require_state()
        primary = state.primary_node or next(iter(state.ports))
        names = [primary, *(name for name in state.ports if name != primary)]
        return [
            LocalNode(
                name=name,
                role="primary" if name == primary else "replica",
                host=state.host,
                port=state.ports[name],
                data_dir=self.base_dir / name,
                log_file=self.base_dir / "log" / f"{name}.log",
            )
            for name in names
        ]

    @property
    def primary(self) -> LocalNode:
        return self.nodes[0]

    @property
    def replicas(self) -> list[LocalNode]:
        return self.nodes[1:]

    @property
    def dbname(self) -> str:
        return self._require_state().dbname

    @property
    def user(self) -> str:
        return self._require_state().user

    @property
    def password(self) -> str:
        return self._require_state().password

    @property
    def replication_password(self) -> str:
        return self._require_state().replication_password

    @property
    def assistant_user(self) -> str:
        return ASSISTANT_ROLE

    @property
    def assistant_password(self) -> str:
        return self._require_state().assistant_password

    @property
    def assistant_write_user(self) -> str:
        return ASSISTANT_WRITE_ROLE

    @property
    def assistant_write_password(self) -> str:
        return self._require_state().assistant_write_password

    def assistant_conninfo(
        self, node: LocalNode | str, *, writes: bool = False, **overrides: Any
    ) -> dict[str, Any]:
        """Keyword arguments for ``psycopg.connect`` to ``node`` as an assistant role."""
        user, password = (
            (ASSISTANT_WRITE_ROLE, self.assistant_write_password)
            if writes
            else (ASSISTANT_ROLE, self.assistant_password)
        )
        return self.conninfo(node, **{"user": user, "password": password, **overrides})

    def node(self, name: str) -> LocalNode:
        """The node called ``name`` (``primary``, ``replica1``...)."""
        for candidate in self.nodes:
            if candidate.name == name:
                return candidate
        known = ", ".join(node.name for node in self.nodes)
        raise LocalClusterError(f"no node {name!r} in the cluster at {self.base_dir} ({known})")

    def conninfo(self, node: LocalNode | str, **overrides: Any) -> dict[str, Any]:
        """Keyword arguments for ``psycopg.connect`` to ``node`` as the application user."""
        target = self.node(node) if isinstance(node, str) else node
        info: dict[str, Any] = {
            "host": target.host,
            "port": target.port,
            "dbname": self.dbname,
            "user": self.user,
            "password": self.password,
            "connect_timeout": 5,
        }
        info.update(overrides)
        return info

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
                        in_recovery = bool(_scalar(conn, "SELECT pg_is_in_recovery()"))
                except psycopg.Error as exc:
                    error = self._redact(str(exc)).strip()
            statuses.append(NodeStatus(node, running, pid, in_recovery, error))
        return statuses

    def wait_for_replay(self, timeout_s: float = 10.0) -> None:
        """Wait until every replica has replayed the primary's current WAL position."""
        deadline = time.monotonic() + timeout_s
        with self._connect(self.primary) as conn:
            target = str(_scalar(conn, "SELECT pg_current_wal_lsn()::text"))
        for replica in self.replicas:
            replayed: str | None = None
            with self._connect(replica, autocommit=True) as conn:
                while True:
                    replayed = _scalar(conn, "SELECT pg_last_wal_replay_lsn()::text")
                    if replayed is not None and parse_lsn(replayed) >= parse_lsn(target):
                        break
                    if time.monotonic() > deadline:
                        raise self._node_error(
                            replica,
                            f"has replayed WAL up to {replayed}, the primary is at {target}; "
                            f"not caught up within {timeout_s}s. Is it streaming? "
                            "(see pg_stat_replication on the primary)",
                        )
                    time.sleep(0.05)

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
        deadline = time.monotonic() + 10
        while _process_alive(pid):
            if time.monotonic() > deadline:
                raise self._node_error(target, f"postmaster {pid} survived SIGKILL for 10 s")
            time.sleep(0.01)
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

    def _check_serves_writes(self, node: LocalNode) -> None:
        try:
            with self._connect_superuser(node) as conn:
                in_recovery = bool(_scalar(conn, "SELECT pg_is_in_recovery()"))
        except psycopg.Error as exc:
            raise self._node_error(node, f"cannot be cloned from: {exc}") from None
        if in_recovery:
            raise self._node_error(
                node, "is in recovery (a replica); rebuild from the current primary instead"
            )

    def _create_node(self, node: LocalNode, timeout_s: float) -> None:
        self._discard_partial_node(node)
        if node.role == "primary":
            self._init_primary(node, timeout_s)
        else:
            self._clone_replica(node, timeout_s)
        state = self._require_state()
        state.initialized.append(node.name)
        self._save_state(state)

    def _init_primary(self, node: LocalNode, timeout_s: float) -> None:
        logger.info("initdb %s in %s", node.name, node.data_dir)
        # --locale=C: present on every system, whatever the caller's LANG; --no-sync: the
        # cluster is throwaway, and syncing costs most of initdb's time.
        self._run(
            [
                str(self._bin("initdb")),
                "-D",
                str(node.data_dir),
                "-U",
                SUPERUSER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            what=f"initdb of {node.name} in {node.data_dir}",
            timeout_s=timeout_s,
        )
        self._write_config(node)
        self._pg_start(node, timeout_s)
        self._bootstrap_roles(node)

    def _write_config(self, primary: LocalNode) -> None:
        network = ipaddress.ip_network(primary.host)
        # Fast settings for a throwaway dev/test cluster. fsync=off: a crash of the OS (not of
        # PostgreSQL) may corrupt it, which is fine here. synchronous_commit stays on, so a
        # kill -9 of the primary in a failover test loses no acknowledged commit.
        # full_page_writes stays on and wal_log_hints is on: pg_rewind needs both to rejoin a
        # former primary as a replica.
        cluster_settings = {
            "listen_addresses": primary.host,
            "unix_socket_directories": str(self._socket_dir),
            "wal_level": "replica",
            "max_wal_senders": "10",
            "max_replication_slots": "10",
            "wal_keep_size": "128MB",
            "hot_standby": "on",
            "hot_standby_feedback": "on",
            "wal_log_hints": "on",
            # Replicas reconnect within a second after the primary restarts (default 5s).
            "wal_retrieve_retry_interval": "1s",
            "fsync": "off",
            "shared_buffers": "32MB",
            "log_line_prefix": "%m [%p] %q%u@%d ",
        }
        conf_dir = primary.data_dir
        _write_private_file(
            conf_dir / "pgwarden_cluster.conf", _conf_file(cluster_settings), for_pg_user=True
        )
        self._write_node_config(primary)
        with (conf_dir / "postgresql.conf").open("a") as handle:
            # Later settings win; replicas copy these files and rewrite only the node file.
            handle.write(
                "\n# Added by pgwarden's local cluster.\n"
                "include 'pgwarden_cluster.conf'\n"
                "include 'pgwarden_node.conf'\n"
            )
        hba = (
            "# pgwarden local cluster. Local connections are trusted: the socket directory is\n"
            "# mode 0700, so only this OS user (and root) can reach them.\n"
            "local   all          all                         trust\n"
            "local   replication  all                         trust\n"
            f"host    all          all          {network}  scram-sha-256\n"
            f"host    replication  {REPLICATION_USER}   {network}  scram-sha-256\n"
        )
        _write_private_file(conf_dir / "pg_hba.conf", hba, for_pg_user=True)

    def _write_node_config(self, node: LocalNode) -> None:
        # cluster_name also becomes a replica's application_name in pg_stat_replication.
        settings = {"port": str(node.port), "cluster_name": node.name}
        _write_private_file(
            node.data_dir / "pgwarden_node.conf", _conf_file(settings), for_pg_user=True
        )

    def _bootstrap_roles(self, primary: LocalNode) -> None:
        state = self._require_state()
        try:
            with self._connect_superuser(primary) as conn:
                self._ensure_role(conn, state.user, state.password, sql.SQL("LOGIN SUPERUSER"))
                self._ensure_role(
                    conn, REPLICATION_USER, state.replication_password, sql.SQL("LOGIN REPLICATION")
                )
                exists = _scalar(
                    conn, "SELECT 1 FROM pg_database WHERE datname = %s", (state.dbname,)
                )
                if not exists:
                    conn.execute(
                        sql.SQL("CREATE DATABASE {} OWNER {}").format(
                            sql.Identifier(state.dbname), sql.Identifier(state.user)
                        )
                    )
        except psycopg.Error as exc:
            raise self._node_error(primary, f"creating roles and database failed: {exc}") from None

    def _fill_in_assistant_passwords(self, state: _ClusterState) -> None:
        """Give a cluster.json from before the assistant roles their passwords, once."""
        if state.assistant_password and state.assistant_write_password:
            return
        state.assistant_password = state.assistant_password or secrets.token_urlsafe(24)
        state.assistant_write_password = state.assistant_write_password or secrets.token_urlsafe(24)
        self._save_state(state)

    def _ensure_assistant_roles(self, primary: LocalNode) -> None:
        """Create the MCP server's least-privilege roles on the primary, if missing.

        The read role gets pg_read_all_data, the write role pg_read_all_data,
        pg_write_all_data and CREATE in the application database's public schema; both
        carry the limits of :func:`endpoints.core.purposes.assistant_role_sql`. Existing roles
        are left alone, so a start writes nothing (and works on a read-only old primary).
        """
        state = self._require_state()
        wanted = {
            ASSISTANT_ROLE: (state.assistant_password, False),
            ASSISTANT_WRITE_ROLE: (state.assistant_write_password, True),
        }
        try:
            with self._connect_superuser(primary) as conn:
                existing = {
                    row[0]
                    for row in conn.execute(
                        "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", [list(wanted)]
                    )
                }
                missing = [role for role in wanted if role not in existing]
                if not missing:
                    return
                if _scalar(conn, "SELECT pg_is_in_recovery()"):
                    logger.warning(
                        "%s is in recovery: the assistant roles (%s) are created once a "
                        "primary starts here",
                        primary.name,
                        ", ".join(missing),
                    )
                    return
                for role in missing:
                    password, writes = wanted[role]
                    self._create_assistant_role(conn, role, password, writes=writes)
            if ASSISTANT_WRITE_ROLE in missing:
                self._grant_schema_create(primary, ASSISTANT_WRITE_ROLE)
        except psycopg.Error as exc:
            raise self._node_error(primary, f"creating the assistant roles failed: {exc}") from None

    @staticmethod
    def _create_assistant_role(
        conn: psycopg.Connection[Any], role: str, password: str, *, writes: bool
    ) -> None:
        # A SCRAM verifier computed here: the plaintext never reaches the server's log.
        verifier = conn.pgconn.encrypt_password(
            password.encode(), role.encode(), b"scram-sha-256"
        ).decode()
        for statement in assistant_role_sql(role, quote_literal(verifier), writes=writes):
            conn.execute(statement.encode())

    def _grant_schema_create(self, primary: LocalNode, role: str) -> None:
        """Let ``role`` create tables in the application database's public schema."""
        with psycopg.connect(
            host=str(self._socket_dir),
            port=primary.port,
            user=SUPERUSER,
            dbname=self._require_state().dbname,
            autocommit=True,
            connect_timeout=10,
        ) as conn:
            conn.execute(
                sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(role))
            )

    @staticmethod
    def _ensure_role(
        conn: psycopg.Connection[Any], role: str, password: str, attributes: sql.SQL
    ) -> None:
        # Send a SCRAM verifier computed here, so the plaintext password never reaches the
        # server (where a failing statement would be written to its log).
        verifier = conn.pgconn.encrypt_password(
            password.encode(), role.encode(), b"scram-sha-256"
        ).decode()
        exists = _scalar(conn, "SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
        verb = sql.SQL("ALTER ROLE" if exists else "CREATE ROLE")
        conn.execute(
            sql.SQL("{} {} WITH {} PASSWORD {}").format(
                verb, sql.Identifier(role), attributes, sql.Literal(verifier)
            )
        )

    def _clone_replica(self, node: LocalNode, timeout_s: float) -> None:
        primary = self.primary
        self._drop_stale_slot(primary, node.name)
        logger.info("pg_basebackup %s from %s", node.name, primary.name)
        # -R writes standby.signal and primary_conninfo (password included, from PGPASSWORD)
        # plus primary_slot_name; -C -S creates that slot, so the primary keeps the WAL the
        # replica still needs. The password goes in the environment, never on the command line.
        self._run(
            [
                str(self._bin("pg_basebackup")),
                "-h",
                primary.host,
                "-p",
                str(primary.port),
                "-U",
                REPLICATION_USER,
                "-D",
                str(node.data_dir),
                "-R",
                "-X",
                "stream",
                "-C",
                "-S",
                node.name,
                "--checkpoint=fast",
                "--no-sync",
                "--no-password",
            ],
            what=f"pg_basebackup of {node.name} from {primary.name} (port {primary.port})",
            env={"PGPASSWORD": self._require_state().replication_password},
            timeout_s=timeout_s,
            log_file=primary.log_file,
        )
        self._write_node_config(node)
        self._pg_start(node, timeout_s)

    def _drop_stale_slot(self, primary: LocalNode, slot: str) -> None:
        # A replica whose creation was interrupted may have left its slot behind, and
        # pg_basebackup -C fails if the slot exists. Its walsender may take a moment to exit.
        deadline = time.monotonic() + 10
        try:
            with self._connect_superuser(primary) as conn:
                while True:
                    row = conn.execute(
                        "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)
                    ).fetchone()
                    if row is None:
                        return
                    if not row[0]:
                        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                        return
                    if time.monotonic() > deadline:
                        raise self._node_error(
                            primary, f"replication slot {slot!r} is still in use by a walsender"
                        )
                    time.sleep(0.2)
        except psycopg.Error as exc:
            raise self._node_error(
                primary, f"dropping stale replication slot {slot!r} failed: {exc}"
            ) from None

    def _discard_partial_node(self, node: LocalNode) -> None:
        if not node.data_dir.exists():
            return
        logger.warning("discarding %s: its creation did not finish", node.data_dir)
        if self._pg_status(node)[0]:
            self._pg_stop(node, mode="immediate", timeout_s=60.0)
        shutil.rmtree(node.data_dir)

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
        if pid is not None and not _process_alive(pid):
            return False, None
        return True, pid

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
            if not _process_alive(pid):
                # Without postmaster.pid the new postmaster cannot see that backends of the
                # old one still use its shared memory, so first let them exit.
                self._wait_for_old_processes(node)
                logger.info("removing stale %s (pid %s is gone)", lock_file, pid)
                lock_file.unlink(missing_ok=True)

    def _wait_for_old_processes(self, node: LocalNode, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while leftovers := _processes_in(node.data_dir):
            if time.monotonic() > deadline:
                raise self._node_error(
                    node,
                    f"cannot restart: processes {leftovers} of its previous, killed server "
                    f"still run in {node.data_dir}; kill them and start again",
                )
            time.sleep(0.1)

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
            if attempt < 2 and "pre-existing shared memory block" in _log_tail(node.log_file, 5):
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

    def _wait_until_serving(self, timeout_s: float) -> None:
        # pg_ctl -w has waited for each start; this also proves that the application user
        # gets in over TCP, which is how pgwarden will connect.
        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            attempts = 0
            while True:
                try:
                    with psycopg.connect(**self.conninfo(node, connect_timeout=2)) as conn:
                        conn.execute("SELECT 1")
                    break
                except psycopg.Error as exc:
                    attempts += 1
                    # Fail fast, with its log, if the server died instead of getting ready.
                    if attempts % 10 == 0 and not self._pg_status(node)[0]:
                        raise self._node_error(node, f"stopped while starting: {exc}") from None
                    if time.monotonic() > deadline:
                        raise self._node_error(
                            node, f"does not accept connections after {timeout_s}s: {exc}"
                        ) from None
                    time.sleep(0.1)

    @property
    def _socket_dir(self) -> Path:
        return self.base_dir / "sockets"

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
                _as_pg_user(argv),
                cwd=self.base_dir,
                env=_child_env(env),
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
                message += "\n" + _log_tail(log_file)
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
        tail = _log_tail(node.log_file)
        message += "\n" + tail
        if "Address already in use" in tail:
            message += (
                f"\nHint: port {node.port} is taken by another process; stop it, or destroy "
                "the cluster so that new ports are chosen."
            )
        return LocalClusterError(self._redact(message))

    def _redact(self, text: str) -> str:
        if self._state is not None:
            state = self._state
            for secret in (
                state.password,
                state.replication_password,
                state.assistant_password,
                state.assistant_write_password,
            ):
                if secret:
                    text = text.replace(secret, _REDACTED)
        return text

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with (self.base_dir / LOCK_FILE).open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _require_state(self) -> _ClusterState:
        if self._state is None:
            if not self.exists():
                raise LocalClusterError(
                    f"no local cluster in {self.base_dir} yet; call start() "
                    "(or run `manage.py local_cluster start`) first"
                )
            self._state = self._read_state()
        return self._state

    def _read_state(self) -> _ClusterState:
        path = self.base_dir / STATE_FILE
        try:
            return _ClusterState(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise LocalClusterError(
                f"{path} is unreadable ({exc}); destroy the cluster and start it again"
            ) from None

    def _save_state(self, state: _ClusterState) -> None:
        text = json.dumps(asdict(state), indent=2) + "\n"
        _write_private_file(self.base_dir / STATE_FILE, text, for_pg_user=False)
        self._state = state

    def _load_or_create_state(self) -> _ClusterState:
        if self.exists():
            self._state = self._read_state()
            return self._state
        names = ["primary", *(f"replica{index}" for index in range(1, self.requested_replicas + 1))]
        ports: set[int] = set()
        while len(ports) < len(names):
            ports.add(free_port(self.host))
        state = _ClusterState(
            host=self.host,
            dbname=APP_DBNAME,
            user=APP_USER,
            password=secrets.token_urlsafe(24),
            replication_password=secrets.token_urlsafe(24),
            ports=dict(zip(names, sorted(ports), strict=True)),
            assistant_password=secrets.token_urlsafe(24),
            assistant_write_password=secrets.token_urlsafe(24),
        )
        self._save_state(state)
        return state

    def _check_matches_request(self, state: _ClusterState) -> None:
        existing = len(state.ports) - 1
        if existing != self.requested_replicas:
            raise LocalClusterError(
                f"the cluster in {self.base_dir} was created with {existing} replica(s), not "
                f"{self.requested_replicas}; pass replicas={existing} (--replicas {existing}) "
                "or destroy it first"
            )
        if state.host != self.host:
            raise LocalClusterError(
                f"the cluster in {self.base_dir} listens on {state.host}, not {self.host}; "
                f"pass host={state.host!r} or destroy it first"
            )

    def _refuse_foreign_dir(self) -> None:
        unexpected = sorted(set(os.listdir(self.base_dir)) - _PRE_INIT_ENTRIES)
        if unexpected:
            shown = ", ".join(unexpected[:5])
            raise LocalClusterError(
                f"{self.base_dir} is not empty and has no {STATE_FILE}, so it is not a pgwarden "
                f"local cluster (it holds {shown}); use a new or empty directory"
            )

    def _prepare_base_dir(self) -> None:
        if self.base_dir.exists():
            if not self.exists():
                self._refuse_foreign_dir()
        else:
            self.base_dir.mkdir(parents=True, mode=0o700)
        if _running_as_root():
            _chown_to_pg_user(self.base_dir)
            self._check_reachable_by_pg_user()

    def _check_reachable_by_pg_user(self) -> None:
        probe = subprocess.run(
            _as_pg_user(["test", "-w", str(self.base_dir)]), cwd="/", check=False
        )
        if probe.returncode == 0:
            return
        user = _pg_os_user()
        gids = set(os.getgrouplist(user.pw_name, user.pw_gid))
        blocked = _first_blocking_dir(self.base_dir, user.pw_uid, gids)
        where = (
            f"{blocked} (mode {stat.filemode(blocked.stat().st_mode)}) is not traversable by it"
            if blocked is not None
            else "it cannot write there (check ACLs and mount options)"
        )
        raise LocalClusterError(
            f"the OS user {PG_OS_USER!r} cannot reach {self.base_dir}: {where}. PostgreSQL "
            "refuses to run as root, so its data must live where that user can go: use a "
            "directory made by tempfile.mkdtemp() under /tmp as the base dir itself, a "
            "directory under <project>/var, or `chmod o+x` the blocking directory"
        )

    def _prepare_runtime_dirs(self) -> None:
        for directory in (self._socket_dir, self.base_dir / "log"):
            directory.mkdir(mode=0o700, exist_ok=True)
            _chown_to_pg_user(directory)
        longest = len(str(self._socket_dir / ".s.PGSQL.65535"))
        if longest > _MAX_SOCKET_PATH:
            raise LocalClusterError(
                f"the socket directory {self._socket_dir} is too long for a Unix socket path "
                f"({longest} > {_MAX_SOCKET_PATH} bytes); use a shorter base dir"
            )


def _scalar(conn: psycopg.Connection[Any], query: LiteralString, params: Sequence[Any] = ()) -> Any:
    row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


def find_redis_server() -> Path:
    """``redis-server`` on PATH or in /usr/bin, with an actionable error if absent."""
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").is_file() else None
    )
    if found is None:
        raise LocalClusterError(
            "redis-server not found on PATH or in /usr/bin; install it with "
            "`apt-get install -y redis-server` (or `make` on a fresh machine)"
        )
    return Path(found)


def _redis_ping(host: str, port: int, timeout_s: float = 0.5) -> str | None:
    """Redis's reply to an inline PING: None if nothing listens, "" if no reply came."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except OSError:
        return None
    with sock:
        try:
            sock.sendall(b"PING\r\n")
            return sock.recv(256).decode(errors="replace").strip()
        except OSError:
            return ""


def _process_alive(pid: int) -> bool:
    # A zombie counts as gone: PID 1 in a container may never reap a daemon we stopped.
    if Path("/proc/self/stat").exists():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            return False
        return fields[0] != "Z"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class LocalRedis:
    """A ``redis-server`` for development and tests, or the one already answering there.

    It owns (and ``stop()`` stops) only a server that it started, which it knows from the
    pidfile in ``base_dir`` - so ownership survives across processes, e.g. between
    ``manage.py local_cluster start`` and ``stop``.
    """

    def __init__(self, base_dir: Path, *, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.base_dir = Path(base_dir).resolve()
        self.host = host
        self._persist_port = port is None
        self.port = port if port is not None else self._saved_port() or free_port(host)

    def __repr__(self) -> str:
        return f"LocalRedis(base_dir={str(self.base_dir)!r}, host={self.host!r}, port={self.port})"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{host}:{self.port}/0"

    @property
    def pidfile(self) -> Path:
        return self.base_dir / "redis.pid"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "redis.log"

    @property
    def owns_server(self) -> bool:
        """Whether a server started from this base dir is running."""
        return self._owned_pid() is not None

    def running(self) -> bool:
        """Whether a Redis answers PING on host:port (ours or not)."""
        reply = _redis_ping(self.host, self.port)
        return reply is not None and reply.startswith("+PONG")

    def start(self, *, timeout_s: float = 10.0) -> None:
        """Start redis-server unless a Redis already answers on host:port, then wait for PING."""
        reply = _redis_ping(self.host, self.port)
        if reply is not None:
            if reply.startswith("+PONG"):
                if not self.owns_server:
                    logger.info("reusing the Redis already running on %s", self.url)
                return
            raise LocalClusterError(
                f"something on {self.host}:{self.port} accepts connections but does not answer "
                f"PING with PONG (reply {reply[:80]!r}); stop it or choose another port"
            )
        binary = find_redis_server()
        self.base_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self._persist_port:
            _write_private_file(
                self.base_dir / "redis.json", json.dumps({"port": self.port}), for_pg_user=False
            )
        argv = [
            str(binary),
            "--bind",
            self.host,
            "--port",
            str(self.port),
            "--dir",
            str(self.base_dir),
            "--daemonize",
            "yes",
            "--pidfile",
            str(self.pidfile),
            "--logfile",
            str(self.log_file),
            # A cache and broker for development: nothing to keep across restarts.
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        result = subprocess.run(
            argv, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
        )
        if result.returncode != 0:
            raise LocalClusterError(
                f"redis-server on {self.host}:{self.port} failed to start "
                f"(exit {result.returncode}): {(result.stdout + result.stderr).strip()}\n"
                + _log_tail(self.log_file)
            )
        deadline = time.monotonic() + timeout_s
        while not self.running():
            if time.monotonic() > deadline:
                raise LocalClusterError(
                    f"redis-server on {self.host}:{self.port} does not answer PING after "
                    f"{timeout_s}s\n" + _log_tail(self.log_file)
                )
            time.sleep(0.05)

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """Stop the server if this base dir started it; leave anyone else's alone."""
        pid = self._owned_pid()
        if pid is None:
            return
        # SIGTERM makes Redis exit cleanly; with --save "" it writes no dump first.
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _process_alive(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                time.sleep(0.2)
                if _process_alive(pid):
                    raise LocalClusterError(
                        f"redis-server (pid {pid}) on {self.host}:{self.port} survived SIGKILL\n"
                        + _log_tail(self.log_file)
                    )
                break
            time.sleep(0.05)
        self.pidfile.unlink(missing_ok=True)

    def _owned_pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        if not _process_alive(pid):
            return None
        # The pid may have been reused by an unrelated process since our server exited.
        with contextlib.suppress(OSError):
            if b"redis-server" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                return None
        return pid

    def _saved_port(self) -> int | None:
        try:
            return int(json.loads((self.base_dir / "redis.json").read_text())["port"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None


def local_redis_for_url(url: str, base_dir: Path) -> LocalRedis | None:
    """A LocalRedis for ``url`` if it points at this machine (loopback), else None."""
    parts = urlsplit(url)
    if parts.scheme != "redis":
        return None
    host = parts.hostname or "127.0.0.1"
    if host == "localhost":
        host = "127.0.0.1"
    try:
        if not ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        return None
    return LocalRedis(base_dir, host=host, port=parts.port or 6379)


class SilentListener:
    """A loopback TCP port that accepts connections and never answers: a hung server.

    For tests and benchmarks: probes and pools aimed at it must give up on their own
    timeouts. ``backlog`` bounds the connections queued before they are accepted.
    """

    def __init__(self, backlog: int = 16) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.port: int = self.sock.getsockname()[1]
        self._accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self._accepted:
            conn.close()
