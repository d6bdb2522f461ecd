"""Drive an example server through 13 tool calls and 4 prompt gets, then show its session.

    python examples/mcp_client.py [--server mcp|fastmcp] [--http] [--session PATH] [--verbose]

It launches examples/mcp_server.py (the SDK's MCPServer) or examples/fastmcp_server.py, over
stdio or, with ``--http``, over streamable HTTP on a free port of 127.0.0.1, and calls it with
the SDK's client. Of the calls, 2 divide by zero, 1 is rate limited, 1 has invalid arguments,
1 names no tool, 1 prompt raises and 1 names no prompt: the server counts
``toolCalls 13, promptCalls 4, errors 6, rateLimits 1``. Then it runs
``aiosessionstore show`` on the session file, which stays where it is; counts add up across
runs (``aiosessionstore reset --path FILE`` zeroes them).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.abc
from anyio.streams.text import TextReceiveStream
from mcp import Client, MCPError, StdioServerParameters
from mcp.types import Implementation

from aiosessionstore import AsyncSessionStore

EXAMPLES = Path(__file__).parent
SERVERS = {"mcp": EXAMPLES / "mcp_server.py", "fastmcp": EXAMPLES / "fastmcp_server.py"}
#: Both example servers are named so; it is their app name, hence their session's directory.
SERVER_NAME = "aiosessionstore-demo"
CLIENT = Implementation(name="demo-client", version="1.0")
READY = re.compile(r"Uvicorn running on (http://127\.0\.0\.1:\d+)")


class Peer(Protocol):
    """What the drive needs of a client: the SDK's ``Client`` is one."""

    async def call_tool(self, name: str, arguments: dict[str, Any], /) -> Any: ...

    async def get_prompt(self, name: str, arguments: dict[str, str], /) -> Any: ...


async def drive(peer: Peer) -> None:
    """The calls of the acceptance case: 13 tool calls and 4 prompt gets."""
    for query in ("sessions", "asyncio", "MCP", "JSON"):
        await peer.call_tool("search", {"query": query})  # 4 calls that work
    for a, b in ((6, 3), (1, 0), (9, 3), (2, 0)):
        await peer.call_tool("divide", {"a": a, "b": b})  # 2 divide by zero: 2 errors
    await peer.call_tool("divide", {"a": "six", "b": 3})  # invalid arguments: an error
    for symbol in ("ACME", "BUSY", "INIT"):
        await peer.call_tool("fetch_quote", {"symbol": symbol})  # BUSY: a rate limit
    await peer.call_tool("no_such_tool", {})  # counted under "(unknown)": an error
    for topic in ("sessions", "latency"):
        await peer.get_prompt("summarize", {"topic": topic})  # 2 prompt gets that work
    for name, arguments in (
        ("translate", {"text": "hello", "language": "tlh"}),  # raises: an error
        ("no_such_prompt", {}),  # counted under "(unknown)": an error
    ):
        with contextlib.suppress(MCPError):  # fails, as it should
            await peer.get_prompt(name, arguments)


@asynccontextmanager
async def http_server(command: list[str], verbose: bool) -> AsyncIterator[str]:
    """Start a server on a free port, yield its URL once it listens, stop it after."""
    process = await anyio.open_process(command, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    async with process, anyio.create_task_group() as tasks:
        base = await tasks.start(_read_stderr, process, verbose)
        try:
            yield f"{base}/mcp"
        finally:
            process.terminate()  # SIGTERM: the server flushes its session as it stops
            await process.wait()


async def _read_stderr(
    process: anyio.abc.Process, verbose: bool, *, task_status: anyio.abc.TaskStatus[str]
) -> None:
    """Find uvicorn's line that says where it listens; go on reading, so that the server
    never blocks on a full pipe. The server's log is shown with --verbose, or if it dies."""
    assert process.stderr is not None
    seen: list[str] = []
    ready = False
    buffered = ""
    async for chunk in TextReceiveStream(process.stderr):
        *lines, buffered = (buffered + chunk).split("\n")
        for line in lines:
            if verbose:
                print(line, file=sys.stderr)
            elif not ready:
                seen.append(line)
            found = READY.search(line)
            if found and not ready:
                ready = True
                task_status.started(found[1])
    if not ready:
        raise RuntimeError("the server stopped before it listened:\n" + "\n".join(seen))


async def run(server: Path, session: str | None, http: bool, verbose: bool) -> None:
    """Launch the server, drive it, and close it, which flushes its session."""
    options = [*(["--session", session] if session else []), *(["--verbose"] if verbose else [])]
    if not http:
        parameters = StdioServerParameters(
            command=sys.executable, args=[str(server), *options], env=dict(os.environ)
        )
        async with Client(parameters, client_info=CLIENT) as client:
            await drive(client)
        return
    command = [sys.executable, str(server), "--http", "0", *options]
    async with (
        http_server(command, verbose) as url,
        Client(url, client_info=CLIENT) as client,
    ):
        await drive(client)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--server", choices=sorted(SERVERS), default="mcp")
    parser.add_argument("--http", action="store_true", help="streamable HTTP instead of stdio")
    parser.add_argument("--session", help=f"session file (default: ~/.{SERVER_NAME}/...)")
    parser.add_argument("--verbose", action="store_true", help="show the server's log in full")
    arguments = parser.parse_args()
    if arguments.server == "fastmcp" and importlib.util.find_spec("fastmcp") is None:
        sys.exit("--server fastmcp needs FastMCP: pip install '.[fastmcp]' (Python 3.11+)")
    anyio.run(run, SERVERS[arguments.server], arguments.session, arguments.http, arguments.verbose)
    # Where the server kept its session: the store resolves the path as the server did.
    path = AsyncSessionStore(arguments.session, app_name=SERVER_NAME).path
    print(f"13 tool calls and 4 prompt gets made; the session is in {path}:\n", flush=True)
    show = [sys.executable, "-m", "aiosessionstore", "show", "--path", str(path)]
    sys.exit(subprocess.run(show, check=False).returncode)


if __name__ == "__main__":
    main()
