"""endpoints.devstack.processes: the OS helpers of the local harness, without any server."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from endpoints.core.waiting import poll_until
from endpoints.devstack.processes import (
    child_env,
    first_blocking_dir,
    free_port,
    log_tail,
    process_alive,
    processes_in,
    write_private_file,
)


def test_first_blocking_dir_follows_owner_group_and_other_bits() -> None:
    base = Path(tempfile.mkdtemp(prefix="pgwarden-test-modes-"))
    try:
        base.chmod(0o755)
        outer = base / "outer"
        (outer / "inner").mkdir(parents=True)
        outer.chmod(0o710)
        owner, group = os.stat(outer).st_uid, os.stat(outer).st_gid
        target = outer / "inner" / "data"

        assert first_blocking_dir(target, owner, set()) is None
        assert first_blocking_dir(target, owner + 54321, {group}) is None
        assert first_blocking_dir(target, owner + 54321, {group + 54321}) == outer
    finally:
        shutil.rmtree(base)


@pytest.mark.processes
def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_child_env_drops_every_libpq_variable_and_adds_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PGHOST", "elsewhere.example")
    monkeypatch.setenv("PGSSLMODE", "require")
    monkeypatch.setenv("PGWARDEN_SETTING", "PG-prefixed too, so dropped too")
    monkeypatch.setenv("HOME_FOR_TEST", "kept")

    env = child_env({"PGPASSWORD": "given"})

    assert not {"PGHOST", "PGSSLMODE", "PGWARDEN_SETTING"} & env.keys()
    assert env["PGPASSWORD"] == "given"
    assert env["HOME_FOR_TEST"] == "kept"


def test_log_tail_quotes_the_last_lines_and_explains_a_missing_or_empty_log(
    tmp_path: Path,
) -> None:
    log = tmp_path / "node.log"
    assert log_tail(log) == f"log file {log} does not exist"
    log.write_text("")
    assert log_tail(log) == f"log file {log} is empty"

    log.write_text("".join(f"line {number}\n" for number in range(30)))

    tail = log_tail(log, lines=3)
    assert tail == f"last lines of {log}:\n  line 27\n  line 28\n  line 29"


def test_write_private_file_replaces_the_file_whole_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "cluster.json"
    path.write_text("old")
    path.chmod(0o644)

    write_private_file(path, "new", for_pg_user=False)

    assert path.read_text() == "new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [entry.name for entry in tmp_path.iterdir()] == ["cluster.json"]


@pytest.mark.processes
def test_process_alive_and_processes_in_see_a_child_until_it_is_reaped(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"],
        cwd=tmp_path,
        stdin=subprocess.PIPE,
    )
    try:
        assert process_alive(child.pid)
        assert processes_in(tmp_path) == [child.pid]
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=10)

    assert not process_alive(child.pid)
    assert processes_in(tmp_path) == []


@pytest.mark.processes
def test_a_zombie_counts_as_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        # Exited but not reaped: a zombie, as a killed postmaster stays under a lazy PID 1.
        assert poll_until(lambda: not process_alive(child.pid), timeout_s=10)
    finally:
        child.wait(timeout=10)
