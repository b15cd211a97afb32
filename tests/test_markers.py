"""The ``servers`` and ``processes`` markers: on every test that is not pure, on no pure test.

``make test-unit`` runs ``pytest -m "not servers and not processes"`` and must start
nothing: no server, no child process, no socket. These tests check the marking the suite
relies on (tests/conftest.py marks by fixture closure, modules and tests that start one
themselves say so) and that the target selects by it.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.helpers.markers import (
    UNIT_EXPRESSION,
    ImpurityWatch,
    deselects_processes,
    deselects_servers,
    unmarked_starters,
)

TESTS = ROOT / "tests"


def servers_collected(*paths: str, marker: str = "servers") -> set[str]:
    """The node ids ``pytest --collect-only -m MARKER PATHS`` selects, in a child process."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", marker, *paths],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {line for line in result.stdout.splitlines() if "::" in line}


def defined(node_id: str) -> bool:
    """Whether the test function a (non-parametrized) node id names exists in its file."""
    path, name = node_id.split("::")
    return f"def {name}(" in (ROOT / path).read_text()


@pytest.mark.processes
def test_tests_that_use_a_server_fixture_are_marked_and_the_others_are_not() -> None:
    # One child for all: each pytest start-up costs seconds of `make test-unit`'s 30.
    servers = servers_collected(
        "tests/test_purposes.py",
        "tests/test_crypto.py",
        "tests/test_catalog.py",
        "tests/test_bench.py",
    )
    by_fixture = [
        # local_cluster (conftest) -> pg_cluster.
        "tests/test_purposes.py::test_an_undecryptable_role_password_says_what_to_do",
        # test_catalog's own `cluster` fixture -> local_cluster -> pg_cluster.
        "tests/test_catalog.py::test_describe_table_takes_schema_dot_table",
    ]
    # Pure, or Django's `db` (SQLite) alone: no server.
    pure = [
        "tests/test_purposes.py::test_operations_sessions_carry_nothing_extra",
        "tests/test_crypto.py::test_round_trip_through_the_database",
        "tests/test_crypto.py::test_rotate_encryption_keys_re_encrypts_with_the_newest_key",
    ]

    assert set(by_fixture) <= servers
    assert all(defined(node_id) for node_id in pure)
    assert servers.isdisjoint(pure)
    # A module that starts servers itself, marked with `pytestmark`.
    assert "tests/test_bench.py::test_bench_quick_run_prints_every_target_with_a_ratio" in servers


@pytest.mark.processes
def test_tests_that_open_a_port_by_fixture_are_marked_processes_and_the_others_are_not() -> None:
    processes = servers_collected(
        "tests/test_probe.py", "tests/test_coordination.py", marker="processes"
    )

    # silent_port (conftest) directly; test_coordination's `unreachable` -> closed_port.
    assert "tests/test_probe.py::test_probe_of_a_silent_port_gives_up_at_the_timeout" in processes
    assert (
        "tests/test_coordination.py::test_without_redis_locks_and_claims_raise_coordination_errors"
        in processes
    )
    pure = "tests/test_probe.py::test_walsenders_are_read_from_the_json_the_probe_returns"
    assert defined(pure)
    assert pure not in processes


def test_every_test_that_starts_a_server_or_a_child_is_marked() -> None:
    unmarked = [
        name for path in sorted(TESTS.glob("test_*.py")) for name in unmarked_starters(path)
    ]

    assert unmarked == []


def test_the_scan_finds_a_server_started_by_hand(tmp_path: Path) -> None:
    module = tmp_path / "test_by_hand.py"
    module.write_text(
        "def test_starts_one(tmp_path):\n"
        "    LocalPostgresCluster(tmp_path).start()\n"
        "def test_uses_the_fixture(pg_cluster):\n"
        "    LocalPostgresCluster(pg_cluster.base_dir).status()\n"
    )

    assert unmarked_starters(module) == ["test_by_hand.py::test_starts_one"]
    marked_test = module.read_text().replace(
        "def test_starts", "@pytest.mark.servers\ndef test_starts"
    )
    module.write_text(marked_test)
    assert unmarked_starters(module) == []
    module.write_text("import pytest\npytestmark = pytest.mark.servers\n" + module.read_text())
    assert unmarked_starters(module) == []


def test_a_child_marked_processes_still_needs_servers_to_start_a_server(tmp_path: Path) -> None:
    module = tmp_path / "test_both.py"
    module.write_text(
        "import pytest\n"
        "pytestmark = pytest.mark.processes\n"
        "def test_cluster(tmp_path):\n"
        "    running_cluster('x')\n"
    )

    assert unmarked_starters(module) == ["test_both.py::test_cluster"]


SOURCE_WITH_CHILDREN = """
import subprocess, http.server, pytest

class Receiver(http.server.ThreadingHTTPServer):
    pass

def helper():
    return subprocess.run(["true"])

def indirect():
    return helper()

@pytest.fixture
def receiver():
    yield Receiver(("127.0.0.1", 0), None)

@pytest.fixture
def port(silent_port):
    return silent_port

def test_direct():
    subprocess.check_output(["true"])

def test_through_two_helpers():
    indirect()

def test_takes_a_listening_fixture(receiver):
    pass

def test_a_fixture_conftest_marks_by(port):
    pass

def test_manage():
    run_manage("check")

def test_pure():
    assert sum([1, 2]) == 3

def test_a_unix_socket_is_no_network_socket(tmp_path):
    socket.socket(socket.AF_UNIX).bind(str(tmp_path / "s"))

class TestGrouped:
    def test_in_a_class(self):
        Receiver(("127.0.0.1", 0), None)
"""


def test_the_scan_finds_children_and_listeners_through_helpers_and_fixtures(
    tmp_path: Path,
) -> None:
    module = tmp_path / "test_children.py"
    module.write_text(SOURCE_WITH_CHILDREN)

    assert unmarked_starters(module) == [
        "test_children.py::test_direct",
        "test_children.py::test_through_two_helpers",
        "test_children.py::test_takes_a_listening_fixture",
        "test_children.py::test_manage",
        "test_children.py::test_in_a_class",
    ]
    marked = SOURCE_WITH_CHILDREN.replace("\ndef test_", "\n@pytest.mark.processes\ndef test_")
    module.write_text(
        marked.replace("class TestGrouped", "@pytest.mark.servers\nclass TestGrouped")
    )
    assert unmarked_starters(module) == []
    module.write_text(SOURCE_WITH_CHILDREN + "pytestmark = [pytest.mark.processes]\n")
    assert unmarked_starters(module) == []


@pytest.mark.processes
def test_the_watch_sees_network_sockets_and_children_a_test_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    watch = ImpurityWatch()
    watch.install(monkeypatch)

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
    subprocess.run([sys.executable, "-c", "pass"], check=True)

    assert watch.seen == [
        "socket.bind(('127.0.0.1', 0))",
        f"subprocess.Popen({[sys.executable, '-c', 'pass']})",
    ]
    complaint = watch.complaint("tests/test_x.py::test_y")
    assert complaint is not None
    assert complaint.startswith("tests/test_x.py::test_y ran in a run without servers")
    assert "pytest.mark.processes" in complaint


def test_the_watch_leaves_unix_sockets_alone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    watch = ImpurityWatch()
    watch.install(monkeypatch)

    with socket.socket(socket.AF_UNIX) as unix:
        unix.bind(str(tmp_path / "s"))
    left, right = socket.socketpair()
    left.close()
    right.close()

    assert watch.seen == []
    assert watch.complaint("tests/test_x.py::test_y") is None


@pytest.mark.parametrize(
    ("markexpr", "deselects"),
    [
        ("not servers", True),
        ("not  servers and not slow", True),
        ("(not servers)", True),
        ("servers", False),
        ("", False),
        ("django_db", False),
    ],
)
def test_deselects_servers_reads_the_marker_expression(markexpr: str, deselects: bool) -> None:
    assert deselects_servers(markexpr) is deselects
    assert deselects_processes(markexpr.replace("servers", "processes")) is deselects
    assert deselects_servers(UNIT_EXPRESSION)
    assert deselects_processes(UNIT_EXPRESSION)


@pytest.mark.processes
def test_make_test_unit_leaves_out_the_servers_tests_and_needs_only_the_venv() -> None:
    makefile = (ROOT / "Makefile").read_text()
    [rule] = [line for line in makefile.splitlines() if line.startswith("test-unit:")]
    dry_run = subprocess.run(
        ["make", "--dry-run", "--always-make", "test-unit", "VENV=.venv"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert rule.split(":", 1)[1].split() == ["$(VENV)/.installed"]
    assert dry_run.returncode == 0, dry_run.stderr
    assert f'pytest -m "{UNIT_EXPRESSION}" -n 2' in dry_run.stdout
    assert "apt-get" not in dry_run.stdout
    # `make test` stays in one process: its server tests share session clusters.
    [test_recipe] = [
        line
        for before, line in zip(makefile.splitlines(), makefile.splitlines()[1:], strict=False)
        if before.startswith("test:")
    ]
    assert "pytest" in test_recipe
    assert " -n " not in test_recipe
