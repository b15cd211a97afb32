"""The local stack behind ``make run``: servers, and the processes we supervise.

:mod:`endpoints.devstack.localcluster` runs PostgreSQL and Redis; this module starts
them, hands the cluster to the caller's ``setup`` (the Django work: migrate, register,
create the admin user - this module imports no Django), and runs web, worker and beat
until interrupted, then stops everything it started, so nothing is orphaned.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from endpoints.core.waiting import poll_until
from endpoints.devstack.localcluster import (
    PROJECT_ROOT,
    LocalPostgresCluster,
    default_cluster_dir,
    local_redis_for_url,
)

logger = logging.getLogger("pgwarden.localstack")


class StackError(Exception):
    """The local stack could not start; the message names what failed."""


@dataclass
class Supervised:
    name: str
    argv: Sequence[str]
    process: subprocess.Popen[bytes] | None = None


@dataclass
class Supervisor:
    """Runs child processes in their own process groups and stops them all, whatever happens."""

    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    cwd: Path = PROJECT_ROOT
    # How long a child may take to exit after SIGTERM before its process group is killed.
    stop_grace_s: float = 10.0
    children: list[Supervised] = field(default_factory=list)
    cleanups: list[tuple[str, Callable[[], None]]] = field(default_factory=list)

    def spawn(self, name: str, argv: Sequence[str]) -> None:
        child = Supervised(name, argv)
        # A session of its own: the terminal's Ctrl-C reaches only us, and we stop the
        # children in order, each with its whole process tree (gunicorn and celery fork).
        try:
            child.process = subprocess.Popen(
                argv, env=self.env, cwd=self.cwd, start_new_session=True
            )
        except OSError as exc:
            raise StackError(f"cannot start {name} ({argv[0]}): {exc.strerror}") from None
        self.children.append(child)
        logger.info("started %s (pid %s)", name, child.process.pid)

    def on_exit(self, name: str, cleanup: Callable[[], None]) -> None:
        self.cleanups.append((name, cleanup))

    def wait(self) -> str | None:
        """Block until interrupted or a child dies; returns the name of a dead child."""
        stop = {"signal": False}

        def interrupted(signum: int, frame: object) -> None:
            stop["signal"] = True

        def interrupted_or_dead_child() -> bool | str | None:
            return stop["signal"] or self._dead_child()

        previous = {sig: signal.signal(sig, interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            # No deadline: this runs until Ctrl-C, SIGTERM or a child's death.
            outcome = poll_until(interrupted_or_dead_child, timeout_s=math.inf, interval_s=0.2)
            return outcome if isinstance(outcome, str) else None
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _dead_child(self) -> str | None:
        """The name of the first child that has exited, if any."""
        for child in self.children:
            if child.process is not None and child.process.poll() is not None:
                return child.name
        return None

    def shutdown(self) -> None:
        # Ignore further Ctrl-C while stopping: a second one must not orphan anything.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for child in reversed(self.children):
                self._stop_child(child)
            for name, cleanup in reversed(self.cleanups):
                try:
                    cleanup()
                    logger.info("stopped %s", name)
                except Exception:
                    logger.exception("stopping %s failed", name)
        finally:
            signal.signal(signal.SIGINT, previous)

    def _stop_child(self, child: Supervised) -> None:
        process = child.process
        if process is None:
            return
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=self.stop_grace_s)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop within %s s; killing it", child.name, self.stop_grace_s)
        # Leftover grandchildren (e.g. a celery pool process) go with the group.
        _signal_group(process.pid, signal.SIGKILL)
        process.wait()
        logger.info("stopped %s", child.name)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def service_commands(host: str, port: int, var_dir: Path) -> list[tuple[str, list[str]]]:
    """The web server, Celery worker and Celery beat, as run by ``make run``."""
    bin_dir = Path(sys.executable).parent
    return [
        (
            "web",
            [
                str(bin_dir / "gunicorn"),
                "project.wsgi",
                f"--bind={host}:{port}",
                "--workers=2",
                "--access-logfile=-",
                "--graceful-timeout=5",
                # Its default socket is one path in $HOME, shared by every checkout.
                "--no-control-socket",
            ],
        ),
        (
            "worker",
            [
                str(bin_dir / "celery"),
                "--app=project",
                "worker",
                "--loglevel=INFO",
                "--concurrency=2",
                "--hostname=pgwarden-local@%h",
            ],
        ),
        (
            "beat",
            [
                str(bin_dir / "celery"),
                "--app=project",
                "beat",
                "--loglevel=INFO",
                f"--schedule={var_dir / 'celerybeat-schedule'}",
            ],
        ),
    ]


@dataclass(frozen=True, kw_only=True)
class StackOptions:
    # The name ``setup`` registers the cluster under, shown in the banner.
    cluster_name: str
    host: str = "127.0.0.1"
    port: int = 8000
    cluster_dir: Path | None = None
    redis_url: str = ""
    var_dir: Path = Path("var")
    # Where progress and the login details go (the command's stdout).
    write: Callable[[str], None] = print


def run_local_stack(
    options: StackOptions, *, setup: Callable[[LocalPostgresCluster, str], str]
) -> int:
    """Start servers, prepare the registry, supervise web/worker/beat until Ctrl-C.

    ``setup(cluster, admin_url)`` migrates, registers and creates the admin user (the
    Django work of the management command) and returns how to log in. Whatever happens,
    everything this call started is stopped before it returns; servers that were already
    running are left running.
    Returns the exit status: 0 after Ctrl-C or SIGTERM, 1 when a child died on its own.
    """
    supervisor = Supervisor()
    # SIGTERM during start-up must clean up like Ctrl-C does, not kill us mid-way.
    previous_term = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        _require_free_port(options.host, options.port)
        cluster = _start_cluster(options, supervisor)
        _start_redis(options, supervisor)
        admin_url = f"http://{_url_host(options.host)}:{options.port}/admin/"
        login = setup(cluster, admin_url)
        for name, argv in service_commands(options.host, options.port, options.var_dir):
            supervisor.spawn(name, argv)
        options.write(_banner(cluster, options.cluster_name, login))
        dead = supervisor.wait()
        if dead is not None:
            options.write(f"{dead} exited on its own (see its output above); stopping everything.")
            return 1
        options.write("Stopping...")
        return 0
    except KeyboardInterrupt:
        options.write("Interrupted; stopping what was started.")
        return 0
    finally:
        supervisor.shutdown()
        signal.signal(signal.SIGTERM, previous_term)


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _require_free_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise StackError(
                f"the web server cannot listen on {host}:{port} ({exc.strerror}); stop what "
                "runs there or choose another port (make run PORT=8001)"
            ) from None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _start_cluster(options: StackOptions, supervisor: Supervisor) -> LocalPostgresCluster:
    cluster = LocalPostgresCluster(options.cluster_dir or default_cluster_dir(), replicas=2)
    was_running = cluster.exists() and all(status.running for status in cluster.status())
    options.write(f"PostgreSQL: starting a primary and two replicas in {cluster.base_dir} ...")
    try:
        cluster.start()
    finally:
        # Registered even when start() failed half-way: nodes it did start must stop.
        if not was_running:
            supervisor.on_exit("PostgreSQL cluster", cluster.stop)
    return cluster


def _start_redis(options: StackOptions, supervisor: Supervisor) -> None:
    base_dir = (options.cluster_dir or default_cluster_dir()) / "redis"
    redis = local_redis_for_url(options.redis_url, base_dir)
    if redis is None:
        _require_remote_redis(options.redis_url)
        return
    was_running = redis.running()
    options.write(f"Redis: {'reusing' if was_running else 'starting'} {redis.url}")
    redis.start()
    if not was_running:
        supervisor.on_exit("Redis", redis.stop)


def _require_remote_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        # Only the host: the URL may carry a password.
        raise StackError(
            f"REDIS_URL points at {urlsplit(url).hostname}, which does not answer: {exc}. "
            "Start it, or unset REDIS_URL to run a local Redis."
        ) from None
    finally:
        client.close()


def _banner(cluster: LocalPostgresCluster, cluster_name: str, login: str) -> str:
    nodes = ", ".join(f"{node.name} {node.host}:{node.port}" for node in cluster.nodes)
    python = Path(sys.executable)
    return (
        "\npgwarden is running.\n"
        f"  {login}\n"
        f"  cluster {cluster_name!r}: {nodes}\n"
        f"  MCP (stdio, for an assistant): {python} manage.py run_mcp --cluster "
        f"{cluster_name}\n"
        f"    reads as role {cluster.assistant_user}, writes (--allow-writes) as "
        f"{cluster.assistant_write_user}\n"
        "  Ctrl-C stops the web server, worker, beat, and the servers started here.\n"
    )
