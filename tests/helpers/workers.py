"""Real Celery processes for tests: workers and beat on the test broker and database.

Contract: each context manager starts ``python -m celery --app=project ...`` as a child
of this process (the test settings reach it through the inherited environment), yields
once it is usable, and on exit stops it (SIGTERM, then SIGKILL); a worker's log is
deleted then, beat's is kept beside its schedule. A worker that exits or does not
answer a ping within ``startup_timeout_s`` raises ``CeleryDidNotStart`` with the tail of
its log.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from endpoints.core.waiting import poll_until
from tests.helpers import ROOT
from tests.helpers.processes import stop_process


class CeleryDidNotStart(RuntimeError):
    """A Celery child exited or stayed silent; the message ends with its log's tail."""


def start_celery(argv: Sequence[str], log_path: Path) -> subprocess.Popen[bytes]:
    """``celery --app=project ARGV`` in the repository root, its output to ``log_path``."""
    with log_path.open("w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "--app=project", *argv],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


@contextmanager
def running_worker(
    app: Any,
    options: Sequence[str],
    log_path: Path,
    *,
    ping_hostname: str | None = None,
    startup_timeout_s: float = 60,
) -> Iterator[subprocess.Popen[bytes]]:
    """``celery worker OPTIONS``, yielded once it answers ``app``'s ping.

    With ``ping_hostname`` only that worker's answer counts (another worker may be up).
    """
    worker = start_celery(["worker", *options], log_path)
    destination = [ping_hostname] if ping_hostname else None

    def up_or_exited() -> str:
        if worker.poll() is not None:
            return "exited"
        return "up" if app.control.ping(destination=destination, timeout=0.5) else ""

    try:
        if poll_until(up_or_exited, timeout_s=startup_timeout_s, interval_s=0) != "up":
            tail = log_path.read_text(errors="replace")[-3000:]
            raise CeleryDidNotStart(f"the Celery worker did not come up:\n{tail}")
        yield worker
    finally:
        stop_process(worker)
        log_path.unlink(missing_ok=True)


@contextmanager
def running_beat(schedule_path: Path, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``celery beat`` with the project's schedule, its state kept in ``schedule_path``."""
    beat = start_celery(["beat", "--loglevel=INFO", f"--schedule={schedule_path}"], log_path)
    try:
        yield beat
    finally:
        stop_process(beat)
