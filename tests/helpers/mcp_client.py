"""Drive ``manage.py run_mcp`` as an MCP client does: a child process over stdio, the SDK's client.

Shared by the MCP tests and ``make bench``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from tests.helpers import ROOT


@dataclass
class Call:
    """One tool call's result, flattened for assertions."""

    is_error: bool
    text: str
    data: Any


@dataclass
class Mcp:
    """A live session with a ``run_mcp`` child process; ``stderr`` is its log so far."""

    session: ClientSession
    stderr_path: Path
    calls: list[Call] = field(default_factory=list)

    async def call(self, tool: str, **arguments: Any) -> Call:
        result = await self.session.call_tool(tool, arguments)
        text = "\n".join(getattr(block, "text", "") for block in result.content)
        call = Call(result.is_error, text, result.structured_content)
        self.calls.append(call)
        return call

    async def ok(self, tool: str, **arguments: Any) -> Any:
        """Call a tool that must succeed; its structured output."""
        call = await self.call(tool, **arguments)
        assert not call.is_error, f"{tool} failed: {call.text}"
        assert call.data is not None, f"{tool} returned no structured output: {call.text}"
        return call.data

    async def error(self, tool: str, **arguments: Any) -> str:
        """Call a tool that must fail; its message."""
        call = await self.call(tool, **arguments)
        assert call.is_error, f"{tool} should have failed, returned {call.data!r}"
        return call.text

    async def tool_names(self) -> set[str]:
        return {tool.name for tool in (await self.session.list_tools()).tools}

    async def resource(self, uri: str) -> Any:
        result = await self.session.read_resource(uri)
        return json.loads(getattr(result.contents[0], "text", ""))

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


def command(*flags: str) -> list[str]:
    return [sys.executable, str(ROOT / "manage.py"), "run_mcp", *flags]


@asynccontextmanager
async def mcp_server(
    *flags: str, env: dict[str, str] | None = None, base_env: dict[str, str] | None = None
) -> AsyncIterator[Mcp]:
    """``manage.py run_mcp FLAGS`` in a child process, initialised, with its stderr kept.

    Its environment is ``base_env`` (default: this process's) updated with ``env``.
    """
    argv = command(*flags)
    base = dict(os.environ) if base_env is None else dict(base_env)
    params = StdioServerParameters(
        command=argv[0], args=argv[1:], env=base | (env or {}), cwd=str(ROOT)
    )
    handle, name = tempfile.mkstemp(prefix="mcp-stderr-", suffix=".log")
    os.close(handle)
    path = Path(name)
    try:
        with path.open("w+") as errlog:
            async with stdio_client(params, errlog=errlog) as streams:
                read, write = streams
                async with ClientSession(read, write, read_timeout_seconds=120) as session:
                    try:
                        await session.initialize()
                    except Exception as exc:
                        errlog.flush()
                        tail = path.read_text(errors="replace")[-3000:]
                        raise RuntimeError(f"run_mcp did not start: {exc}\n{tail}") from exc
                    yield Mcp(session, path)
    finally:
        path.unlink(missing_ok=True)


Body = Callable[[Mcp], Awaitable[None]]


def run_body(
    *flags: str,
    env: dict[str, str] | None = None,
    after: Callable[[Mcp], None] | None = None,
) -> Callable[[Body], None]:
    """A decorator that runs an async test body against a fresh ``run_mcp FLAGS`` child.

    ``after(mcp)`` runs once the body is done, whatever its outcome (a leak check).
    """

    def runner(body: Body) -> None:
        async def main() -> None:
            async with mcp_server(*flags, env=env) as mcp:
                try:
                    await body(mcp)
                finally:
                    if after is not None:
                        after(mcp)

        anyio.run(main)

    return runner
