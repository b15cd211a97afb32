"""MCP round trip: ``query("SELECT 1")`` over stdio beside ``routing.execute()`` in one run.

The issue's target: under 2 ms above the direct call. The MCP side is the whole
round trip an assistant pays: the SDK client writes the JSON-RPC request to
``manage.py run_mcp``'s stdin, the server validates the arguments, guards the
SQL, runs it through the router in a READ ONLY transaction that is rolled back
(with the statement timeout), shapes the rows and writes the result back. The
direct side is ``routing.execute("local", "SELECT 1")`` in this process, a plain
autocommit statement. A third row puts the MCP call beside the service it calls,
``queries.read_query`` in this process (guard, READ ONLY transaction, JSON
shaping): what the protocol itself costs. All are timed in the client's event
loop, in alternating order, as an async MCP client would see them.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import anyio

from endpoints import routing
from endpoints.services import queries
from tests.helpers.mcp_client import mcp_server

Row = tuple[str, str, str, str, str]
CLUSTER = "local"
TARGET_MS = 2.0


def run(*, quick: bool) -> list[Row]:
    iterations = 200 if quick else 2_000
    print("starting manage.py run_mcp for the MCP bench", file=sys.stderr)
    mcp_ms: list[float] = []
    direct_ms: list[float] = []
    service_ms: list[float] = []

    async def main() -> None:
        # The server keeps Django's guard (an empty value is off).
        async with mcp_server(env={"DJANGO_ALLOW_ASYNC_UNSAFE": ""}) as mcp:

            async def over_mcp() -> None:
                result = await mcp.session.call_tool("query", {"sql": "SELECT 1"})
                assert not result.is_error, result.content

            async def direct() -> None:
                routing.execute(CLUSTER, "SELECT 1")

            async def service() -> None:
                queries.read_query(CLUSTER, "SELECT 1")

            samples: dict[Callable[[], Awaitable[None]], list[float]] = {
                over_mcp: mcp_ms,
                direct: direct_ms,
                service: service_ms,
            }
            for _ in range(100):  # warm-up: pools, caches, the server's imports
                for warm in samples:
                    await warm()
            for i in range(iterations):
                order = list(samples)
                if i % 2:
                    order.reverse()
                for call in order:
                    started = time.perf_counter()
                    await call()
                    samples[call].append((time.perf_counter() - started) * 1000)

    with _database_access_in_the_event_loop():
        anyio.run(main)
    mcp, service_median = statistics.median(mcp_ms), statistics.median(service_ms)
    return [
        _row("median", mcp, statistics.median(direct_ms)),
        _row("p99", _percentile(mcp_ms, 0.99), _percentile(direct_ms, 0.99)),
        (
            'MCP query("SELECT 1"), median, beside the same query service in-process (ms)',
            f"{mcp:.2f}",
            f"{service_median:.2f} (queries.read_query)",
            f"+{mcp - service_median:.2f} ms",
            "",
        ),
    ]


@contextmanager
def _database_access_in_the_event_loop() -> Iterator[None]:
    """The direct calls run in the event loop, where Django refuses database access by
    default; the router reloads its topology from the registry now and then."""
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


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
