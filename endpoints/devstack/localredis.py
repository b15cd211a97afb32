"""A local ``redis-server`` for development and tests, or the one already answering there.

Contract: :class:`LocalRedis` starts a server only when nothing answers on its address,
and stops only a server it started (known from the pidfile in its base directory, so
ownership survives across processes). :func:`local_redis_for_url` says whether a
``REDIS_URL`` is one we may run locally (loopback only).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

from endpoints.core.waiting import poll_until
from endpoints.devstack.processes import (
    LocalClusterError,
    free_port,
    log_tail,
    process_alive,
    write_private_file,
)

logger = logging.getLogger(__name__)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


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


def redis_ping(host: str, port: int, timeout_s: float = 0.5) -> str | None:
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
        reply = redis_ping(self.host, self.port)
        return reply is not None and reply.startswith("+PONG")

    def start(self, *, timeout_s: float = 10.0) -> None:
        """Start redis-server unless a Redis already answers on host:port, then wait for PING."""
        reply = redis_ping(self.host, self.port)
        if reply is not None:
            if reply.startswith("+PONG"):
                if not self.owns_server:
                    logger.info("reusing the Redis already running on %s", self.url)
                return
            raise LocalClusterError(
                f"something on {self.host}:{self.port} accepts connections but does not answer "
                f"PING with PONG (reply {reply[:80]!r}); stop it or choose another port"
            )
        argv = self._server_argv()
        self.base_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self._persist_port:
            write_private_file(
                self.base_dir / "redis.json", json.dumps({"port": self.port}), for_pg_user=False
            )
        result = subprocess.run(
            argv, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
        )
        if result.returncode != 0:
            raise LocalClusterError(
                f"redis-server on {self.host}:{self.port} failed to start "
                f"(exit {result.returncode}): {(result.stdout + result.stderr).strip()}\n"
                + log_tail(self.log_file)
            )
        if not poll_until(self.running, timeout_s=timeout_s, interval_s=0.05):
            raise LocalClusterError(
                f"redis-server on {self.host}:{self.port} does not answer PING after "
                f"{timeout_s}s\n" + log_tail(self.log_file)
            )

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """Stop the server if this base dir started it; leave anyone else's alone."""
        pid = self._owned_pid()
        if pid is None:
            return

        def exited() -> bool:
            return not process_alive(pid)

        # SIGTERM makes Redis exit cleanly; with --save "" it writes no dump first.
        os.kill(pid, signal.SIGTERM)
        if not poll_until(exited, timeout_s=timeout_s, interval_s=0.05):
            os.kill(pid, signal.SIGKILL)
            if not poll_until(exited, timeout_s=0.2, interval_s=0.05):
                raise LocalClusterError(
                    f"redis-server (pid {pid}) on {self.host}:{self.port} survived SIGKILL\n"
                    + log_tail(self.log_file)
                )
        self.pidfile.unlink(missing_ok=True)

    def _server_argv(self) -> list[str]:
        return [
            str(find_redis_server()),
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

    def _owned_pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        if not process_alive(pid):
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
