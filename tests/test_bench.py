"""``make bench`` runs end to end and prints its table (a smoke run; speed is not asserted)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.helpers import ROOT

# `python -m bench` starts a throwaway PostgreSQL cluster and Redis.
pytestmark = pytest.mark.servers


def test_bench_quick_run_prints_every_target_with_a_ratio() -> None:
    # A clean environment: the bench must not inherit this test run's database or Redis.
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PGWARDEN", "DJANGO", "DATABASE", "REDIS", "CELERY"))
        and key not in ("SECRET_KEY", "ALLOWED_HOSTS", "DEBUG", "LOG_LEVEL", "TIME_ZONE")
        and not key.startswith("CSRF")
    }
    process = subprocess.run(
        [sys.executable, "-m", "bench", "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    rows = {
        cells[0]: cells[1:]
        for line in process.stdout.splitlines()
        if line.startswith("| ") and not line.startswith("| benchmark")
        for cells in [[cell.strip() for cell in line.strip("|").split("|")]]
    }
    for label in (
        "SELECT 1 latency, median (µs)",
        "SELECT 1 latency, p99 (µs)",
        "classification, cold (µs/statement)",
        "classification, cached (µs/statement)",
        "8 threads, 90% reads / 10% writes (ops/s)",
    ):
        assert label in rows, process.stdout
        assert re.fullmatch(r"\d+\.\d+", rows[label][2]), rows[label]
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Benchmarks", 1)[1].split("\n## ", 1)[0]
    for label in rows:
        assert f"| {label}" in section, f"README's benchmark table lacks {label!r}"
