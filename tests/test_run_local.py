"""manage.py run_local (what `make run` runs), end to end, as a user runs it.

It starts its own PostgreSQL cluster and Redis, serves the admin over HTTP with cluster
``local`` whose connection checks succeed, and on Ctrl-C stops every process it started.
"""

from __future__ import annotations

import http.cookiejar
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from html import unescape
from pathlib import Path

import anyio
import pytest

from endpoints.core.waiting import poll_until
from endpoints.devstack.localcluster import LocalPostgresCluster, free_port
from endpoints.devstack.localredis import redis_ping
from endpoints.devstack.processes import process_alive, processes_in
from tests.helpers.mcp_client import mcp_server

# run_local starts PostgreSQL, Redis, the web server, a worker and beat.
pytestmark = pytest.mark.servers

ROOT = Path(__file__).resolve().parent.parent
ADMIN_PASSWORD = "run-local-test-password"


@dataclass
class RunningStack:
    process: subprocess.Popen[str]
    base_url: str
    cluster_dir: Path
    redis_port: int
    env: dict[str, str]
    output: list[str] = field(default_factory=list)

    def text(self) -> str:
        return "".join(self.output)

    def wait_for(self, needle: str, timeout_s: float) -> None:
        def printed_or_exited() -> bool:
            return needle in self.text() or self.process.poll() is not None

        poll_until(printed_or_exited, timeout_s=timeout_s, interval_s=0.1)
        if needle not in self.text():
            pytest.fail(f"run_local never printed {needle!r}; output:\n{self.text()[-4000:]}")


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


@pytest.fixture
def stack() -> Iterator[RunningStack]:
    cluster_dir = Path(tempfile.mkdtemp(prefix="pgwarden-test-runlocal-"))
    port, redis_port = free_port(), free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DJANGO_SETTINGS_MODULE", "PGWARDEN_TEST_ENV_OWNER"}
    }
    env.update(
        {
            # The production settings module, with a control database of its own.
            "DATABASE_URL": f"sqlite:///{cluster_dir / 'control.sqlite3'}",
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "PGWARDEN_ADMIN_USER": "admin",
            "PGWARDEN_ADMIN_PASSWORD": ADMIN_PASSWORD,
        }
    )
    process = subprocess.Popen(
        [sys.executable, "manage.py", "run_local", f"--port={port}", f"--dir={cluster_dir}"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    running = RunningStack(process, f"http://127.0.0.1:{port}", cluster_dir, redis_port, env)
    assert process.stdout is not None
    reader = threading.Thread(
        target=lambda: running.output.extend(iter(process.stdout.readline, "")),  # type: ignore[union-attr]
        daemon=True,
    )
    reader.start()
    try:
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        LocalPostgresCluster(cluster_dir).destroy()


class AdminSession:
    """A browser-like HTTP client: cookies, CSRF tokens, followed redirects."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))

    def get(self, path: str) -> str:
        with self.opener.open(self.base_url + path, timeout=30) as response:
            return response.read().decode()

    def post(self, path: str, data: list[tuple[str, str]]) -> str:
        csrf = next(cookie.value for cookie in self.cookies if cookie.name == "csrftoken")
        body = urllib.parse.urlencode([("csrfmiddlewaretoken", csrf), *data]).encode()
        request = urllib.request.Request(  # noqa: S310 - loopback http only
            self.base_url + path, data=body, headers={"Referer": self.base_url + path}
        )
        with self.opener.open(request, timeout=60) as response:
            return response.read().decode()

    def log_in(self, user: str, password: str) -> str:
        self.get("/admin/login/")
        return self.post(
            "/admin/login/?next=/admin/",
            [("username", user), ("password", password), ("next", "/admin/")],
        )


async def _assistant_reads_as(stack: RunningStack) -> str:
    async with mcp_server("--cluster", "local", base_env=stack.env) as mcp:
        answer = await mcp.ok("query", sql="SELECT current_user AS me")
    return str(answer["rows"][0]["me"])


def _serves(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
            return bool(response.status == 200)
    except OSError:  # refused, reset, or no answer yet while gunicorn's workers boot
        return False


def _wait_until_serving(url: str, timeout_s: float) -> None:
    assert poll_until(lambda: _serves(url), timeout_s=timeout_s, interval_s=0.2), (
        f"{url} not served within {timeout_s} s"
    )


def test_run_local_serves_the_admin_with_the_local_cluster_and_stops_everything(
    stack: RunningStack,
) -> None:
    stack.wait_for("pgwarden is running.", timeout_s=120)
    _wait_until_serving(stack.base_url + "/admin/login/", timeout_s=30)
    assert f"user: admin  password: {ADMIN_PASSWORD}" in stack.text()

    session = AdminSession(stack.base_url)
    index = session.log_in("admin", ADMIN_PASSWORD)
    assert "Log out" in index or "logout" in index

    changelist = session.get("/admin/endpoints/endpoint/")
    ids = re.findall(r'name="_selected_action" value="(\d+)"', changelist)
    assert len(ids) == 3
    for name in ("primary", "replica1", "replica2"):
        assert f">{name}<" in changelist

    result = unescape(
        session.post(
            "/admin/endpoints/endpoint/",
            [("action", "check_connection_now"), ("index", "0")]
            + [("_selected_action", pk) for pk in ids],
        )
    )
    assert result.count("connected. PostgreSQL 15") == 3, result
    assert result.count("in recovery (replica)") == 2
    assert "not in recovery (primary)" in result

    # The assistant's least-privilege roles are created and registered: an MCP client that
    # starts `run_mcp --cluster local`, as the banner says, reads as the assistant role.
    assert "manage.py run_mcp --cluster local" in stack.text()
    cluster_page = session.get("/admin/endpoints/cluster/")
    [cluster_id] = re.findall(r'href="/admin/endpoints/cluster/(\d+)/change/', cluster_page)
    page = session.get(f"/admin/endpoints/cluster/{cluster_id}/change/")
    assert 'value="pgwarden_assistant"' in page
    assert 'value="pgwarden_assistant_write"' in page
    assert anyio.run(_assistant_reads_as, stack) == "pgwarden_assistant"

    # Everything it started, before Ctrl-C: its process tree (web, worker, beat and their
    # forks), the PostgreSQL servers (which daemonise) and Redis (which daemonises too).
    cluster = LocalPostgresCluster(stack.cluster_dir)
    started = _descendants(stack.process.pid)
    for node in cluster.nodes:
        started.update(processes_in(node.data_dir))
    redis_pid = int((stack.cluster_dir / "redis" / "redis.pid").read_text())
    started.add(redis_pid)
    assert len(started) >= 3 + 3 + 1

    stack.process.send_signal(signal.SIGINT)
    assert stack.process.wait(timeout=90) == 0, stack.text()[-4000:]

    survivors = {pid for pid in started if process_alive(pid)}
    assert not survivors, f"processes left running after Ctrl-C: {survivors}"
    assert not any(status.running for status in cluster.status())
    assert redis_ping("127.0.0.1", stack.redis_port) is None
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(stack.base_url + "/admin/login/", timeout=2)  # noqa: S310


def test_run_local_refuses_a_busy_web_port_and_starts_nothing(stack_port_taken: int) -> None:
    cluster_dir = Path(tempfile.mkdtemp(prefix="pgwarden-test-runlocal-busy-"))
    try:
        result = subprocess.run(
            [
                sys.executable,
                "manage.py",
                "run_local",
                f"--port={stack_port_taken}",
                f"--dir={cluster_dir}",
            ],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode != 0
        assert f"cannot listen on 127.0.0.1:{stack_port_taken}" in result.stderr
        assert not LocalPostgresCluster(cluster_dir).exists()
    finally:
        LocalPostgresCluster(cluster_dir).destroy()


@pytest.fixture
def stack_port_taken() -> Iterator[int]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]
