"""MCP round trip: ``query("SELECT 1")`` over stdio beside ``routing.execute()`` in one run.

The issue's target: under 2 ms above the direct call. The MCP side is the whole
round trip an assistant pays: the SDK client in this process writes the JSON-RPC
request to ``manage.py run_mcp``'s stdin, the server validates the arguments,
guards the SQL, runs it through the router in a READ ONLY transaction that is
rolled back, shapes the rows and writes the result back. The direct side is
``routing.execute("local", "SELECT 1")`` in this process. Both are timed from
the same thread, strictly alternating (the MCP call crosses into the client's
event loop through an anyio portal, a cost charged to the MCP side).
"""

from __future__ import annotations

import statistics
import sys
import time
from contextlib import AbstractContextManager as ContextManager
from typing import Any

import anyio.from_thread
from anyio.from_thread import BlockingPortal

from endpoints import routing
from tests.mcp_client import Mcp, mcp_server

Row = tuple[str, str, str, str, str]
CLUSTER = "local"
TARGET_MS = 2.0


def run(*, quick: bool) -> list[Row]:
    iterations = 200 if quick else 2_000
    print("starting manage.py run_mcp for the MCP bench", file=sys.stderr)
    mcp_ms: list[float] = []
    direct_ms: list[float] = []
    with anyio.from_thread.start_blocking_portal() as portal, _session(portal) as mcp:

        def over_mcp() -> None:
            result = portal.call(mcp.session.call_tool, "query", {"sql": "SELECT 1"})
            assert not result.is_error, result.content

        def direct() -> None:
            routing.execute(CLUSTER, "SELECT 1")

        for _ in range(100):  # warm-up: pools, caches, the server's imports
            over_mcp()
            direct()
        for i in range(iterations):
            first, second = (over_mcp, direct) if i % 2 else (direct, over_mcp)
            for call in (first, second):
                started = time.perf_counter()
                call()
                elapsed = (time.perf_counter() - started) * 1000
                (mcp_ms if call is over_mcp else direct_ms).append(elapsed)
    return [
        _row("median", statistics.median(mcp_ms), statistics.median(direct_ms)),
        _row("p99", _percentile(mcp_ms, 0.99), _percentile(direct_ms, 0.99)),
    ]


def _session(portal: BlockingPortal) -> ContextManager[Mcp]:
    return portal.wrap_async_context_manager(mcp_server())


def _row(label: str, ours: float, baseline: float) -> Row:
    return (
        f'MCP query("SELECT 1") over stdio, {label} (ms)',
        f"{ours:.2f}",
        f"{baseline:.2f} (routing.execute)",
        f"+{ours - baseline:.2f} ms",
        f"< +{TARGET_MS:g} ms" if label == "median" else "",
    )


def _percentile(samples: list[Any], fraction: float) -> float:
    ordered = sorted(samples)
    return float(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))])
