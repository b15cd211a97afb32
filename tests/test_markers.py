"""The ``servers`` marker: on every test that needs a real server, on no pure test.

``make test-unit`` runs ``pytest -m "not servers"`` and must start nothing: these tests
check the marking the suite relies on (tests/conftest.py marks by fixture closure, modules
that start servers themselves say so) and that the target selects by it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.helpers.markers import SERVER_FIXTURES, UNIT_EXPRESSION, deselects_servers

TESTS = ROOT / "tests"

# Calls that start a server (or a browser) when a test makes them itself.
SERVER_STARTERS = frozenset(
    {"LocalPostgresCluster", "LocalRedis", "running_cluster", "running_redis", "Chrome"}
)
# Fixtures from tests/conftest.py whose closure holds a server fixture.
SERVER_BACKED = SERVER_FIXTURES | {"local_cluster", "fresh_router", "celery_beat"}


def servers_collected(*paths: str) -> set[str]:
    """The node ids ``pytest --collect-only -m servers PATHS`` selects, in a child process."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "servers", *paths],
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


def _marks_module_servers(tree: ast.Module) -> bool:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "pytestmark" for target in node.targets
        ):
            return "pytest.mark.servers" in ast.unparse(node.value)
    return False


def _called_names(function: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Call):
            called = node.func
            if isinstance(called, ast.Attribute):
                names.add(called.attr)
            elif isinstance(called, ast.Name):
                names.add(called.id)
    return names


def unmarked_server_starters(path: Path) -> list[str]:
    """Functions in ``path`` that start a server without any way to be marked ``servers``.

    A function is covered when its module or the function itself is marked, or when it
    takes a server-backed fixture (its test is then marked by fixture closure).
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    if _marks_module_servers(tree):
        return []
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if not SERVER_STARTERS & _called_names(node):
            continue
        if any("pytest.mark.servers" in ast.unparse(mark) for mark in node.decorator_list):
            continue
        parameters = {argument.arg for argument in node.args.args}
        if not parameters & SERVER_BACKED:
            found.append(f"{path.name}::{node.name}")
    return found


def test_every_module_that_starts_servers_itself_marks_its_tests() -> None:
    unmarked = [
        name for path in sorted(TESTS.glob("test_*.py")) for name in unmarked_server_starters(path)
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

    assert unmarked_server_starters(module) == ["test_by_hand.py::test_starts_one"]
    marked_test = module.read_text().replace(
        "def test_starts", "@pytest.mark.servers\ndef test_starts"
    )
    module.write_text(marked_test)
    assert unmarked_server_starters(module) == []
    module.write_text("import pytest\npytestmark = pytest.mark.servers\n" + module.read_text())
    assert unmarked_server_starters(module) == []


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
    assert f'pytest -m "{UNIT_EXPRESSION}"' in dry_run.stdout
    assert "apt-get" not in dry_run.stdout
