"""The ``servers`` and ``processes`` markers: which tests are not pure, and the scan that checks it.

A pure test (``make test-unit``) starts no server, no child process and opens no socket,
so it never waits on one. Two markers say why a test is not pure:

- ``servers``: it needs a real PostgreSQL, Redis, Celery or browser.
- ``processes``: it starts a child process (``manage.py``, ``run_mcp``, a Python child,
  a shell) or a local network listener or socket (``SilentListener``, a webhook receiver,
  a silent or closed port), and so waits on it or on a timeout.

Contract: ``tests/conftest.py`` marks every collected test whose fixture closure holds a
name in ``SERVER_FIXTURES`` (``servers``) or ``PROCESS_FIXTURES`` (``processes``);
modules and tests that start them without those fixtures say so with ``pytestmark`` or a
decorator, which :func:`unmarked_starters` (run by ``tests/test_markers.py``) checks.
``make test-unit`` runs ``pytest -m "not servers and not processes"``, in which the
server fixtures refuse to start (``deselects_servers``), so a test that reached one
another way fails instead of quietly starting a cluster; and :class:`ImpurityWatch`
fails a test that opened a network socket or started a child from Python anyway (a
signal handler reaching for Redis, say), which no reading of the source can see.
"""

from __future__ import annotations

import ast
import os
import socket
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

#: Fixtures that start a real PostgreSQL, Redis or Celery. pytest's fixture closure of a
#: test holds every fixture it uses, directly or through others (``local_cluster``,
#: ``fresh_router``, ``celery_beat``, a module's own fixture built on these), so naming
#: the ones that start servers is enough.
SERVER_FIXTURES = frozenset({"pg_cluster", "redis_server", "celery_worker", "fresh"})

#: Fixtures that start a child process or open a local socket (tests/conftest.py's
#: ports, and modules' own listeners with names used nowhere else).
PROCESS_FIXTURES = frozenset({"silent_port", "closed_port"})

#: The marker expression ``make test-unit`` selects with.
UNIT_EXPRESSION = "not servers and not processes"

#: Calls that start a server (or a browser) when a test makes them itself.
SERVER_STARTERS = frozenset(
    {"LocalPostgresCluster", "LocalRedis", "running_cluster", "running_redis", "Chrome"}
)
#: Fixtures from tests/conftest.py whose closure holds a server fixture.
SERVER_BACKED = SERVER_FIXTURES | {"local_cluster", "fresh_router", "celery_beat"}

#: ``module.function`` calls that start a child process or open a socket.
PROCESS_CALLS = frozenset(
    {
        ("subprocess", "run"),
        ("subprocess", "Popen"),
        ("subprocess", "call"),
        ("subprocess", "check_call"),
        ("subprocess", "check_output"),
        ("asyncio", "create_subprocess_exec"),
        ("asyncio", "create_subprocess_shell"),
        ("asyncio", "start_server"),
        ("asyncio", "open_connection"),
        ("socket", "socket"),
        ("socket", "create_connection"),
        ("socket", "create_server"),
        ("os", "fork"),
        ("os", "system"),
        ("os", "posix_spawn"),
        ("multiprocessing", "Process"),
    }
)
#: Names whose call (or, for classes, whose subclassing) starts a child or a listener:
#: the standard library's servers and this project's helpers that wrap a child.
PROCESS_STARTERS = frozenset(
    {
        "Popen",
        "HTTPServer",
        "ThreadingHTTPServer",
        "TCPServer",
        "ThreadingTCPServer",
        "UDPServer",
        "SilentListener",
        "run_manage",
        "start_celery",
        "running_worker",
        "running_beat",
        "mcp_server",
        "run_body",
        "stdio_client",
        "spawn",
    }
)


def deselects_processes(markexpr: str) -> bool:
    """Whether a ``-m`` expression leaves ``processes`` tests out (a plain reading too)."""
    return "not processes" in " ".join(markexpr.replace("(", " ").replace(")", " ").split())


def deselects_servers(markexpr: str) -> bool:
    """Whether a ``-m`` expression leaves ``servers`` tests out (as ``make test-unit`` does).

    A plain reading, not a parser: it looks for ``not servers`` whatever the spacing.
    """
    return "not servers" in " ".join(markexpr.replace("(", " ").replace(")", " ").split())


# The scan: a test that starts a server or a child without a way to be marked.


def _call_names(node: ast.AST) -> tuple[set[str], set[tuple[str, str]]]:
    """Names called in ``node`` (``f()`` and ``x.f()`` give ``f``) and ``module.f`` pairs."""
    names: set[str] = set()
    qualified: set[tuple[str, str]] = set()
    for call in ast.walk(node):
        if not isinstance(call, ast.Call):
            continue
        called = call.func
        if isinstance(called, ast.Name):
            names.add(called.id)
        elif isinstance(called, ast.Attribute):
            names.add(called.attr)
            unix_socket = call.args and "AF_UNIX" in ast.unparse(call.args[0])
            if isinstance(called.value, ast.Name) and not unix_socket:
                qualified.add((called.value.id, called.attr))
    return names, qualified


def _base_names(node: ast.ClassDef) -> set[str]:
    return {ast.unparse(base).rsplit(".", 1)[-1] for base in node.bases}


def _marked(decorators: Iterable[ast.expr], markers: tuple[str, ...]) -> bool:
    text = " ".join(ast.unparse(decorator) for decorator in decorators)
    return any(f"mark.{marker}" in text for marker in markers)


def _module_marks(tree: ast.Module) -> tuple[str, set[str]]:
    """The module's ``pytestmark`` as text, and the fixtures it ``usefixtures``."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "pytestmark" for target in node.targets
        ):
            used = {
                argument.value
                for call in ast.walk(node.value)
                if isinstance(call, ast.Call) and ast.unparse(call.func).endswith("usefixtures")
                for argument in call.args
                if isinstance(argument, ast.Constant) and isinstance(argument.value, str)
            }
            return ast.unparse(node.value), used
    return "", set()


def _is_fixture(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any("fixture" in ast.unparse(decorator) for decorator in node.decorator_list)


def _parameters(node: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    return {argument.arg for argument in node.args.args + node.args.kwonlyargs}


class _Module:
    """One test module's definitions and which of them start a server or a child."""

    def __init__(self, tree: ast.Module) -> None:
        self.definitions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef] = {}
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                self.definitions[node.name] = node
        self.server = self._closure(SERVER_STARTERS, frozenset())
        self.process = self._closure(PROCESS_STARTERS, PROCESS_CALLS)
        # Fixtures conftest marks by, and the module's fixtures built on them.
        self.server_backed = SERVER_BACKED | self._closure(SERVER_BACKED, frozenset())
        self.process_backed = PROCESS_FIXTURES | self._closure(PROCESS_FIXTURES, frozenset())

    def _closure(
        self, starters: frozenset[str], calls: frozenset[tuple[str, str]]
    ) -> frozenset[str]:
        """Module names that start one, directly or through other names of the module."""
        starting: set[str] = set()
        changed = True
        while changed:
            changed = False
            for name, node in self.definitions.items():
                if name in starting:
                    continue
                names, qualified = _call_names(node)
                if isinstance(node, ast.ClassDef):
                    names |= _base_names(node)
                elif _is_fixture(node):  # a fixture built on a starting fixture starts too
                    names |= _parameters(node)
                if names & (starters | starting) or qualified & calls:
                    starting.add(name)
                    changed = True
        return frozenset(starting)


def _tests(tree: ast.Module) -> Iterable[tuple[ast.FunctionDef | ast.AsyncFunctionDef, list]]:
    """Test functions with the decorators that apply to them (their class's too)."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if node.name.startswith("test"):
                yield node, node.decorator_list
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            for method in node.body:
                if isinstance(method, ast.FunctionDef | ast.AsyncFunctionDef) and (
                    method.name.startswith("test")
                ):
                    yield method, node.decorator_list + method.decorator_list


def unmarked_starters(path: Path) -> list[str]:
    """Tests in ``path`` that start a server or a child without being marked for it.

    A test starts one when it calls a starter, or a function, class or fixture of its
    module that does (through any depth), or takes such a fixture. It is covered when
    its module, class or itself is marked (``servers`` covers a child too: both leave
    ``make test-unit``), or when it takes a fixture conftest marks by.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    module = _Module(tree)
    module_marks, used_fixtures = _module_marks(tree)
    found = []
    for test, decorators in _tests(tree):
        names, qualified = _call_names(test)
        names |= _parameters(test) | used_fixtures
        needs_server = bool(names & (SERVER_STARTERS | module.server))
        needs_child = bool(names & (PROCESS_STARTERS | module.process) or qualified & PROCESS_CALLS)
        if not needs_server and not needs_child:
            continue
        backed = bool(names & module.server_backed)
        if backed or "mark.servers" in module_marks or _marked(decorators, ("servers",)):
            continue
        child_covered = (
            names & module.process_backed
            or "mark.processes" in module_marks
            or _marked(decorators, ("processes",))
        )
        if needs_server or not child_covered:
            found.append(f"{path.name}::{test.name}")
    return found


# At run time: what a test did that the source does not show.

_NETWORK = (socket.AF_INET, socket.AF_INET6)


class ImpurityWatch:
    """Records the network sockets a test opens and the children it starts, from Python.

    ``install`` wraps ``socket.socket.connect``/``connect_ex``/``bind``, ``subprocess.Popen``
    and ``os.fork`` through ``monkeypatch`` (so they are restored after the test); the
    calls still happen, only noted in ``seen``. Unix sockets (an event loop's self-pipe)
    are not network sockets; libpq's own connections, made in C, are not seen.

    ``refused_at`` are addresses where nothing listens in this run, so a connection there
    is refused at once: the test settings' Redis, which a unit run never starts and which
    the routing topology retries every second or so whatever test happens to be running
    (the code degrades without Redis; that path is what such a test then checks).
    """

    def __init__(self, refused_at: Iterable[tuple[str, int]] = ()) -> None:
        self.seen: list[str] = []
        self.refused_at = frozenset(refused_at)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        seen, refused_at = self.seen, self.refused_at
        real = socket.socket
        for method in ("connect", "connect_ex", "bind"):
            original = getattr(real, method)

            def watched(
                sock: socket.socket, address: Any, _original: Any = original, _name: str = method
            ) -> Any:
                if sock.family in _NETWORK and tuple(address[:2]) not in refused_at:
                    seen.append(f"socket.{_name}({address!r})")
                return _original(sock, address)

            monkeypatch.setattr(real, method, watched)
        real_popen_init = subprocess.Popen.__init__

        def popen_init(
            process: subprocess.Popen[Any], args: Any, *rest: Any, **options: Any
        ) -> None:
            seen.append(f"subprocess.Popen({str(args)[:120]})")
            real_popen_init(process, args, *rest, **options)

        monkeypatch.setattr(subprocess.Popen, "__init__", popen_init)
        real_fork = os.fork

        def fork() -> int:
            seen.append("os.fork()")
            return real_fork()

        monkeypatch.setattr(os, "fork", fork)

    def complaint(self, node_id: str) -> str | None:
        """What to tell the author of ``node_id``, or None if it stayed pure."""
        if not self.seen:
            return None
        return (
            f"{node_id} ran in a run without servers or processes but did: "
            f"{'; '.join(dict.fromkeys(self.seen))}. Mark it `pytest.mark.processes` "
            "(or `servers`), see tests/helpers/markers.py"
        )
