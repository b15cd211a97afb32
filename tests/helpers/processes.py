"""Child processes for tests: ``manage.py`` as an operator runs it, and stopping a child.

Contract: ``run_manage`` waits for the child and returns its result, never raising on a
non-zero exit; ``stop_process`` always leaves the child reaped (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from tests.helpers import ROOT


def run_manage(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``manage.py`` the way an operator does, in a child process.

    Its environment is ``env``, or this process's (which carries the test settings).
    """
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        cwd=ROOT,
        env=env if env is not None else dict(os.environ),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def stop_process(process: subprocess.Popen[Any], *, grace_s: float = 20) -> None:
    """Ask ``process`` to stop (SIGTERM); kill it if it has not within ``grace_s``."""
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
