"""A local cluster's base directory: its layout, its persisted state, and its nodes.

Layout of a cluster's base directory::

    cluster.json        ports, names and passwords (mode 0600); reused by every later start
    cluster.lock        serialises start/stop/destroy between processes (e.g. xdist workers)
    sockets/            Unix sockets of every node (mode 0700: local connections are trusted)
    log/<node>.log      server log of each node, appended to by every start
    primary/, replica1/, ...  data directories

:class:`ClusterLayout` is the first layer of :class:`~endpoints.devstack.postgres.
LocalPostgresCluster`: it reads and writes ``cluster.json``, takes the lock, names the
nodes and says how to connect to them. It runs no PostgreSQL tool.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import secrets
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from endpoints.core.crypto import redact
from endpoints.core.purposes import ASSISTANT_ROLE, ASSISTANT_WRITE_ROLE
from endpoints.core.vocabulary import Role
from endpoints.devstack.processes import (
    PG_OS_USER,
    PROJECT_ROOT,
    LocalClusterError,
    as_pg_user,
    chown_to_pg_user,
    first_blocking_dir,
    free_port,
    pg_os_user,
    running_as_root,
    write_private_file,
)

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


@dataclass(frozen=True)
class LocalNode:
    """One PostgreSQL server of the local cluster."""

    name: str
    role: Role
    host: str
    port: int
    data_dir: Path
    log_file: Path


@dataclass
class ClusterState:
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


def default_cluster_dir() -> Path:
    """``$PGWARDEN_LOCAL_CLUSTER_DIR``, else ``<project root>/var/local-cluster``."""
    override = os.environ.get("PGWARDEN_LOCAL_CLUSTER_DIR")
    return Path(override) if override else PROJECT_ROOT / "var" / "local-cluster"


class ClusterLayout:
    """Base directory, ``cluster.json`` and nodes of a local cluster (no server is touched)."""

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
        self._state: ClusterState | None = None
        self._pg_bin: Path | None = None

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
                role=Role.PRIMARY if name == primary else Role.REPLICA,
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

    @property
    def _socket_dir(self) -> Path:
        return self.base_dir / "sockets"

    def _redact(self, text: str) -> str:
        """``text`` without this cluster's passwords (core.crypto's one redaction)."""
        if self._state is None:
            return redact(text)
        state = self._state
        return redact(
            text,
            state.password,
            state.replication_password,
            state.assistant_password,
            state.assistant_write_password,
        )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with (self.base_dir / LOCK_FILE).open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _require_state(self) -> ClusterState:
        if self._state is None:
            if not self.exists():
                raise LocalClusterError(
                    f"no local cluster in {self.base_dir} yet; call start() "
                    "(or run `manage.py local_cluster start`) first"
                )
            self._state = self._read_state()
        return self._state

    def _read_state(self) -> ClusterState:
        path = self.base_dir / STATE_FILE
        try:
            return ClusterState(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise LocalClusterError(
                f"{path} is unreadable ({exc}); destroy the cluster and start it again"
            ) from None

    def _save_state(self, state: ClusterState) -> None:
        text = json.dumps(asdict(state), indent=2) + "\n"
        write_private_file(self.base_dir / STATE_FILE, text, for_pg_user=False)
        self._state = state

    def _load_or_create_state(self) -> ClusterState:
        if self.exists():
            self._state = self._read_state()
            return self._state
        names = ["primary", *(f"replica{index}" for index in range(1, self.requested_replicas + 1))]
        ports: set[int] = set()
        while len(ports) < len(names):
            ports.add(free_port(self.host))
        state = ClusterState(
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

    def _fill_in_assistant_passwords(self, state: ClusterState) -> None:
        """Give a cluster.json from before the assistant roles their passwords, once."""
        if state.assistant_password and state.assistant_write_password:
            return
        state.assistant_password = state.assistant_password or secrets.token_urlsafe(24)
        state.assistant_write_password = state.assistant_write_password or secrets.token_urlsafe(24)
        self._save_state(state)

    def _check_matches_request(self, state: ClusterState) -> None:
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
        if running_as_root():
            chown_to_pg_user(self.base_dir)
            self._check_reachable_by_pg_user()

    def _check_reachable_by_pg_user(self) -> None:
        probe = subprocess.run(as_pg_user(["test", "-w", str(self.base_dir)]), cwd="/", check=False)
        if probe.returncode == 0:
            return
        user = pg_os_user()
        gids = set(os.getgrouplist(user.pw_name, user.pw_gid))
        blocked = first_blocking_dir(self.base_dir, user.pw_uid, gids)
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
            chown_to_pg_user(directory)
        longest = len(str(self._socket_dir / ".s.PGSQL.65535"))
        if longest > _MAX_SOCKET_PATH:
            raise LocalClusterError(
                f"the socket directory {self._socket_dir} is too long for a Unix socket path "
                f"({longest} > {_MAX_SOCKET_PATH} bytes); use a shorter base dir"
            )
