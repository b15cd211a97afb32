"""devstack.localstack: supervising real child processes."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from endpoints.core.waiting import poll_until
from endpoints.devstack.localstack import StackError, Supervisor
from endpoints.devstack.processes import process_alive

PYTHON = sys.executable


def _python(code: str) -> list[str]:
    return [PYTHON, "-c", code]


def _wait_for_file(path: Path, timeout_s: float = 10) -> str:
    def written() -> str:
        return path.read_text().strip() if path.exists() else ""

    text = poll_until(written, timeout_s=timeout_s)
    assert text, f"{path} never written"
    return text


@pytest.mark.processes
def test_shutdown_stops_children_then_runs_cleanups_in_reverse(tmp_path: Path) -> None:
    supervisor = Supervisor()
    order: list[str] = []
    supervisor.on_exit("first", lambda: order.append("first"))
    supervisor.on_exit("second", lambda: order.append("second"))
    supervisor.spawn("sleeper", _python("import time; time.sleep(60)"))
    sleeper = supervisor.children[0].process
    assert sleeper is not None

    supervisor.shutdown()

    assert sleeper.returncode == -signal.SIGTERM
    assert order == ["second", "first"]


def test_a_failing_cleanup_does_not_stop_the_others() -> None:
    supervisor = Supervisor()
    ran: list[str] = []

    def broken() -> None:
        raise RuntimeError("cannot stop")

    supervisor.on_exit("kept", lambda: ran.append("kept"))
    supervisor.on_exit("broken", broken)

    supervisor.shutdown()

    assert ran == ["kept"]


@pytest.mark.processes
def test_a_child_ignoring_sigterm_is_killed_with_its_grandchildren(tmp_path: Path) -> None:
    grandchild_pid = tmp_path / "grandchild.pid"
    # The child starts a grandchild that ignores SIGTERM, then ignores SIGTERM itself.
    code = (
        "import signal, subprocess, sys, time;"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        "g = subprocess.Popen([sys.executable, '-c', 'import signal, time;"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)']);"
        f"open({str(grandchild_pid)!r}, 'w').write(str(g.pid));"
        "time.sleep(120)"
    )
    supervisor = Supervisor(stop_grace_s=0.5)
    supervisor.spawn("stubborn", _python(code))
    pid = int(_wait_for_file(grandchild_pid))
    started = time.monotonic()

    supervisor.shutdown()

    assert time.monotonic() - started < 5
    process = supervisor.children[0].process
    assert process is not None
    assert process.returncode == -signal.SIGKILL
    assert poll_until(lambda: not process_alive(pid), timeout_s=5), (
        "the grandchild survived its group's SIGKILL"
    )


@pytest.mark.processes
def test_wait_returns_the_name_of_a_child_that_exits() -> None:
    supervisor = Supervisor()
    supervisor.spawn("steady", _python("import time; time.sleep(60)"))
    supervisor.spawn("crasher", _python("raise SystemExit(3)"))
    try:
        assert supervisor.wait() == "crasher"
    finally:
        supervisor.shutdown()


@pytest.mark.processes
def test_wait_returns_none_on_sigterm_and_restores_the_handler() -> None:
    supervisor = Supervisor()
    supervisor.spawn("steady", _python("import time; time.sleep(60)"))
    before = signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        assert supervisor.wait() is None
    finally:
        timer.cancel()
        supervisor.shutdown()
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.processes
def test_a_missing_program_is_a_clear_error() -> None:
    supervisor = Supervisor()

    with pytest.raises(StackError, match=r"cannot start web \(/nonexistent/gunicorn\)"):
        supervisor.spawn("web", ["/nonexistent/gunicorn"])
