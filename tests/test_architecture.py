"""The shape of the code is a checked fact: module sizes, the app root, no import cycle.

The layer contracts themselves are in ``pyproject.toml`` (``[tool.importlinter]``) and run
as ``lint-imports`` in ``make lint``; this module checks what a layers contract cannot:
that no module (not only no sibling package) takes part in an import cycle, imports
inside functions included, and the size limits issue 14 set.
"""

from __future__ import annotations

from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_MODULE_LINES = 800
MAX_APP_ROOT_MODULES = 15


def _python_files(package: str) -> list[Path]:
    return [
        path
        for path in sorted((ROOT / package).rglob("*.py"))
        if "migrations" not in path.relative_to(ROOT).parts
    ]


@pytest.mark.parametrize("package", ["endpoints", "mcpbridge"])
def test_no_module_is_over_the_size_limit(package: str):
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for path in _python_files(package)
    }
    too_long = {name: lines for name, lines in sizes.items() if lines > MAX_MODULE_LINES}
    assert too_long == {}
    assert sizes, f"no Python files found under {package}/"


def test_the_app_root_holds_only_djangos_files_and_few_of_them():
    root_modules = sorted(path.name for path in (ROOT / "endpoints").glob("*.py"))
    assert len(root_modules) <= MAX_APP_ROOT_MODULES, root_modules
    assert "models.py" in root_modules


def _cycles(graph: grimp.ImportGraph, modules: set[str]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(modules):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start) & modules)))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                imported = graph.find_modules_directly_imported_by(child) & modules
                work.append((child, iter(sorted(imported))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def test_cycle_finder_finds_a_cycle_and_only_cycles():
    graph = grimp.ImportGraph()
    for module in ("a", "b", "c", "d"):
        graph.add_module(module)
    graph.add_import(importer="a", imported="b")
    graph.add_import(importer="b", imported="c")
    graph.add_import(importer="c", imported="a")
    graph.add_import(importer="c", imported="d")
    assert _cycles(graph, {"a", "b", "c", "d"}) == [["a", "b", "c"]]
    graph.remove_import(importer="c", imported="a")
    assert _cycles(graph, {"a", "b", "c", "d"}) == []


def test_no_import_cycle_among_pgwardens_modules():
    # Function-level imports count (grimp sees them); TYPE_CHECKING-only imports never run.
    graph = grimp.build_graph(
        "endpoints", "mcpbridge", "project", exclude_type_checking_imports=True, cache_dir=None
    )
    ours = {m for m in graph.modules if m.split(".")[0] in {"endpoints", "mcpbridge", "project"}}
    assert _cycles(graph, ours) == []
