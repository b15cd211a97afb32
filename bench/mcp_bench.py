"""MCP round trip: ``query("SELECT 1")`` over stdio beside ``routing.execute()`` in one run.

The issue's target: under 2 ms above the direct call. The MCP side is the whole
round trip an assistant pays: the SDK client writes the JSON-RPC request to
``manage.py run_mcp``'s stdin, the server validates the arguments, guards the
SQL, runs it through the router in a READ ONLY transaction that is rolled back
(with the statement timeout), shapes the rows and writes the result back. The
direct side is ``routing.execute("local", "SELECT 1")`` in this process, a plain
autocommit statement. Both are timed in the client's event loop, strictly
alternating, as an async MCP client would see them.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

import anyio

from endpoints import routing
from tests.mcp_client import mcp_server

Row = tuple[str, str, str, str, str]
CLUSTER = "local"
TARGET_MS = 2.0


def run(*, quick: bool) -> list[Row]:
    iterations = 200 if quick else 2_000
    print("starting manage.py run_mcp for the MCP bench", file=sys.stderr)
    mcp_ms: list[float] = []
    direct_ms: list[float] = []

    async def main() -> None:
        # The server keeps Django's guard (an empty value is off).
        async with mcp_server(env={"DJANGO_ALLOW_ASYNC_UNSAFE": ""}) as mcp:

            async def over_mcp() -> None:
                result = await mcp.session.call_tool("query", {"sql": "SELECT 1"})
                assert not result.is_error, result.content

            async def direct() -> None:
                routing.execute(CLUSTER, "SELECT 1")

            for _ in range(100):  # warm-up: pools, caches, the server's imports
                await over_mcp()
                await direct()
            for i in range(iterations):
                pair: tuple[Callable[[], Awaitable[None]], ...] = (
                    (over_mcp, direct) if i % 2 else (direct, over_mcp)
                )
                for call in pair:
                    started = time.perf_counter()
                    await call()
                    elapsed = (time.perf_counter() - started) * 1000
                    (mcp_ms if call is over_mcp else direct_ms).append(elapsed)

    # The direct call runs in the event loop, where Django refuses database access by
    # default; the router reloads its topology from the registry now and then.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        anyio.run(main)
    finally:
        if previous is None:
            del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous
    return [
        _row("median", statistics.median(mcp_ms), statistics.median(direct_ms)),
        _row("p99", _percentile(mcp_ms, 0.99), _percentile(direct_ms, 0.99)),
    ]


def _row(label: str, ours: float, baseline: float) -> Row:
    return (
        f'MCP query("SELECT 1") over stdio, {label} (ms)',
        f"{ours:.2f}",
        f"{baseline:.2f} (routing.execute)",
        f"+{ours - baseline:.2f} ms",
        f"< +{TARGET_MS:g} ms" if label == "median" else "",
    )


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
