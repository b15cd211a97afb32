"""The stdio transport of ``run_mcp``: the SDK's framing, read and written on asyncio pipes.

The SDK's ``stdio_server()`` reads stdin and writes stdout through anyio's file
wrappers, which run every ``readline``, ``write`` and ``flush`` in a worker
thread: three thread hand-offs per message, about half a millisecond of every
tool call on a small machine. An MCP client talks to us over pipes (or a
socket), which the event loop can watch directly, so when both ends are such
pipes we hand ``stdio_server`` two small adapters over asyncio's pipe
transports instead: the SDK still parses, validates and serialises every
message; only the waiting moves into the event loop.

Anything else on stdin or stdout (a terminal, a regular file, stdout shared
with stderr, one socket for both) gets the SDK's own transport unchanged:
asyncio would switch such a descriptor to non-blocking mode, and with it
whatever else shares it.

As the SDK does, fd 0 is pointed at the null device and fd 1 at stderr while
serving, so a stray ``print`` or a child process can never corrupt the
protocol; the wire is read and written through private duplicates.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import stat
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any, cast

import anyio
from mcp.server.stdio import stdio_server

logger = logging.getLogger("pgwarden.mcp")

# A request line longer than this is dropped (and logged) rather than buffered:
# far beyond any tool call, small enough that a runaway client cannot exhaust memory.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@asynccontextmanager
async def stdio_streams() -> AsyncIterator[tuple[Any, Any]]:
    """The (read, write) message streams of the MCP session on this process's stdio."""
    wire = _claim_pipes()
    if wire is None:
        logger.info(
            "stdio: stdin or stdout is not a pipe of its own (a terminal, a file, stdout "
            "shared with stderr): serving through the SDK's threaded transport"
        )
        async with stdio_server() as streams:
            yield streams
        return
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_MESSAGE_BYTES, loop=loop)
    read_transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader, loop=loop),
        os.fdopen(wire.read_fd, "rb", buffering=0, closefd=False),
    )
    write_transport, write_protocol = await loop.connect_write_pipe(
        lambda: asyncio.streams.FlowControlMixin(loop=loop),
        os.fdopen(wire.write_fd, "wb", buffering=0, closefd=False),
    )
    writer = asyncio.StreamWriter(write_transport, write_protocol, None, loop)
    logger.info("stdio: serving the pipes from the event loop")
    try:
        # stdio_server reads lines with `async for` and writes with write() and
        # flush(): the two adapters below are the file objects it expects.
        async with stdio_server(
            stdin=cast(Any, _Lines(reader)), stdout=cast(Any, _Output(writer))
        ) as streams:
            yield streams
    finally:
        read_transport.close()
        write_transport.close()
        wire.release()


@dataclass
class _Wire:
    """Private duplicates of the client's stdin and stdout, while fds 0 and 1 are diverted."""

    read_fd: int
    write_fd: int

    def release(self) -> None:
        """Point fds 0 and 1 back at the wire, in blocking mode as they were."""
        for fd, private in ((0, self.read_fd), (1, self.write_fd)):
            with suppress(OSError):
                os.set_blocking(private, True)
                os.dup2(private, fd)
            with suppress(OSError):
                os.close(private)


def _claim_pipes() -> _Wire | None:
    """Divert fds 0 and 1 and return the wire, if both are pipes or sockets of their own.

    Node-based clients (libuv) give a child a socket pair per stream, others pipes.
    """
    if not (_is_std(sys.stdin, 0) and _is_std(sys.stdout, 1)):
        return None
    try:
        stdin, stdout = os.fstat(0), os.fstat(1)
    except OSError:
        return None
    if not (_pipe_like(stdin) and _pipe_like(stdout)) or _same_file(stdout, 2):
        return None
    if _same_file(stdout, 0):
        # One socket both ways: asyncio's write transport watches its descriptor for the
        # reader going away, and would take the client's next request for that.
        return None
    sys.stdout.flush()
    read_fd = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 3)
    write_fd = fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, 3)
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(null, 0)
    finally:
        os.close(null)
    os.dup2(2, 1)
    return _Wire(read_fd, write_fd)


def _is_std(stream: Any, fd: int) -> bool:
    try:
        return bool(stream.fileno() == fd)
    except (AttributeError, OSError, ValueError):
        return False


def _pipe_like(info: os.stat_result) -> bool:
    return stat.S_ISFIFO(info.st_mode) or stat.S_ISSOCK(info.st_mode)


def _same_file(info: os.stat_result, fd: int) -> bool:
    """Whether ``fd`` is the same pipe or file: making one non-blocking would make both so."""
    try:
        other = os.fstat(fd)
    except OSError:
        return False
    return (info.st_dev, info.st_ino) == (other.st_dev, other.st_ino)


class _Lines:
    """stdin as the SDK reads it: an async iterator of decoded lines."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader

    def __aiter__(self) -> _Lines:
        return self

    async def __anext__(self) -> str:
        while True:
            try:
                line = await self.reader.readline()
            except ValueError:
                # Over MAX_MESSAGE_BYTES: StreamReader has dropped it; keep serving.
                logger.error("dropped a message over %d bytes from the client", MAX_MESSAGE_BYTES)
                continue
            if not line:
                raise StopAsyncIteration
            return line.decode("utf-8", errors="replace")


class _Output:
    """stdout as the SDK writes it: write() then flush(), which waits only when the pipe is full."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    async def write(self, text: str) -> None:
        if self.writer.is_closing():
            raise anyio.ClosedResourceError  # the client is gone: the SDK stops writing
        self.writer.write(text.encode("utf-8"))

    async def flush(self) -> None:
        try:
            await self.writer.drain()
        except ConnectionError:  # BrokenPipeError, ConnectionResetError
            raise anyio.ClosedResourceError from None
