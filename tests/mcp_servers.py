"""Shared by the MCP tests: the acceptance case's expected counts, and servers in processes.

Run as a script, it is a server over stdio:

    python mcp_servers.py stall PATH   examples/mcp_server.py's server, whose app lifespan
                                       hangs on shutdown, so that the client must SIGTERM it;
                                       it says STALLED on stderr once it hangs
    python mcp_servers.py named NAME   an MCPServer called NAME with one tool, ``ping``, and
                                       its session where its name puts it
    python mcp_servers.py hang PATH --http PORT
                                       a FastMCP server over streamable HTTP with ``ping``
                                       and ``hang``, which says HANGING on stderr and never
                                       returns: uvicorn's shutdown then waits 30 s for it;
                                       its store says SEVEN_STORED once it has written 7
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from anyio.streams.text import TextReceiveStream

EXAMPLES = Path(__file__).parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

#: Where the example servers keep their session, under HOME: their name is the app name.
DEMO_SESSION = Path(".aiosessionstore-demo", "session.json")
#: What examples/mcp_client.py's ``drive`` leaves in the session of an example server.
ACCEPTANCE = {"toolCalls": 13, "promptCalls": 4, "errors": 6, "rateLimits": 1}
TOOLS = {  # calls, errors, rate limits
    "search": (4, 0, 0),
    "divide": (5, 3, 0),  # 2 divisions by zero, 1 with invalid arguments
    "fetch_quote": (3, 0, 1),
    "(unknown)": (1, 1, 0),
}
PROMPTS = {"summarize": (2, 0, 0), "translate": (1, 1, 0), "(unknown)": (1, 1, 0)}
_READY = re.compile(r"Uvicorn running on (http://127\.0\.0\.1:\d+)")
#: What the stall server says on stderr once its shutdown hangs.
STALLED = "stalled in shutdown"
#: What the hang server's ``hang`` tool says on stderr once it runs, and its store once it
#: has written 7 tool calls.
HANGING = "HANGING"
SEVEN_STORED = "7 tool calls stored"


def check_acceptance(document: Mapping[str, Any], *clients: str) -> None:
    """The session file after one drive by each of ``clients`` (a name twice: two drives):
    every count, per tool, per prompt and per client, and latency buckets for each."""
    runs = len(clients)
    assert document["stats"] == {key: runs * value for key, value in ACCEPTANCE.items()}
    for section, expected in (("tools", TOOLS), ("prompts", PROMPTS)):
        entries = document[section]
        counted = {
            name: (entry["calls"], entry["errors"], entry["rateLimits"])
            for name, entry in entries.items()
        }
        assert counted == {name: tuple(runs * n for n in ns) for name, ns in expected.items()}
        for entry in entries.values():
            assert sum(entry["latency"].values()) == entry["calls"]
        total = "toolCalls" if section == "tools" else "promptCalls"
        assert sum(entry["calls"] for entry in entries.values()) == document["stats"][total]
    assert document["clients"] == {
        client: {"toolCalls": 13 * drives, "promptCalls": 4 * drives}
        for client, drives in Counter(clients).items()
    }


def environment(home: Path, **more: str) -> dict[str, str]:
    """This process's environment (coverage's variables too), with HOME in the test's
    directory: the SDK's stdio client passes on only a few variables unless told."""
    return {**os.environ, "HOME": str(home), **more}


@asynccontextmanager
async def http_server(
    command: list[str], env: Mapping[str, str], watch: Mapping[str, anyio.Event] | None = None
) -> AsyncIterator[tuple[str, anyio.abc.Process, list[str]]]:
    """Start ``command`` (a server taking ``--http PORT``) on a free port of 127.0.0.1.

    Yields the URL of its MCP endpoint once uvicorn says where it listens, the process, and
    the lines of its stderr so far, which are read until it ends: it never blocks on a pipe.
    ``watch``: an event for a line, set once a line of stderr is that line.
    """
    process = await anyio.open_process(
        [*command, "--http", "0"],
        stdin=subprocess.PIPE,  # not DEVNULL: opening it on the loop thread is blocking I/O
        stdout=None,
        stderr=subprocess.PIPE,
        env=dict(env),
    )
    lines: list[str] = []
    async with process, anyio.create_task_group() as tasks:
        try:
            with anyio.fail_after(60):  # a safety net, not a wait: readiness is a line
                base = await tasks.start(_read_lines, process, lines, watch or {})
            yield f"{base}/mcp", process, lines
        finally:
            if process.returncode is None:
                process.kill()


async def _read_lines(
    process: anyio.abc.Process,
    lines: list[str],
    watch: Mapping[str, anyio.Event],
    *,
    task_status: anyio.abc.TaskStatus[str],
) -> None:
    assert process.stderr is not None
    ready = False
    buffered = ""
    async for chunk in TextReceiveStream(process.stderr):
        *complete, buffered = (buffered + chunk).split("\n")
        lines.extend(complete)
        for line in complete:
            if line in watch:
                watch[line].set()
            found = _READY.search(line)
            if found and not ready:
                ready = True
                task_status.started(found[1])
    if not ready:
        raise AssertionError("the server ended before it listened:\n" + "\n".join(lines))


class StderrLines:
    """A pipe to give a server as its stderr, read to its end on a thread of its own (so a
    full pipe never blocks the server); ``seen`` is set once ``line`` has come."""

    def __init__(self, line: str) -> None:
        read_end, write_end = os.pipe()
        self.errlog = os.fdopen(write_end, "w")
        self.seen = threading.Event()
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, args=(read_end, line), daemon=True)
        self._reader.start()

    def _read(self, fd: int, line: str) -> None:
        with open(fd, encoding="utf-8", errors="replace") as stream:
            for each in stream:
                self.lines.append(each)
                if each.rstrip("\n") == line:
                    self.seen.set()

    def close(self) -> None:
        """Close our end, once the server is gone: the reader then sees the end of the pipe."""
        self.errlog.close()
        self._reader.join(10)


def _serve() -> None:
    from collections.abc import AsyncIterator as Iterator
    from contextlib import asynccontextmanager as lifespan

    from mcp.server.mcpserver import MCPServer
    from mcp_server import HideExpectedFailures, build_server

    from aiosessionstore import session_lifespan

    @lifespan
    async def stall_on_exit(server: Any) -> Iterator[dict[str, str]]:
        try:
            yield {"app": "state"}
        finally:
            with anyio.CancelScope(shield=True):
                print(STALLED, file=sys.stderr, flush=True)
                await anyio.sleep(60)  # for good: the client's SIGTERM ends it

    kind, argument = sys.argv[1:3]
    if kind == "hang":
        _serve_hang(argument, int(sys.argv[4]))
        return
    if kind == "stall":
        server = build_server(argument, app_lifespan=stall_on_exit)
        # As the example server without --verbose: the drive's failures, made on purpose, are
        # not logged, each with a traceback rendered at some 0.3 s apiece.
        logging.getLogger("mcp").setLevel(logging.WARNING)
        for handler in logging.getLogger().handlers:
            handler.addFilter(HideExpectedFailures())
        server.run("stdio")
        return
    server = MCPServer(argument, lifespan=session_lifespan())

    @server.tool()
    async def ping() -> str:
        return "pong"

    server.run("stdio")


def _serve_hang(path: str, port: int) -> None:
    from fastmcp import FastMCP

    from aiosessionstore import FileBackend, session_lifespan

    class SaysWhatItStored(FileBackend):
        def commit(self, change: Any) -> Any:
            record = super().commit(change)
            if record.session.stats.tool_calls == 7:
                print(SEVEN_STORED, file=sys.stderr, flush=True)
            return record

    server = FastMCP("hang", lifespan=session_lifespan(backend=SaysWhatItStored(path)))

    @server.tool
    async def ping() -> str:
        return "pong"

    @server.tool
    async def hang() -> None:
        print(HANGING, file=sys.stderr, flush=True)
        await anyio.sleep_forever()

    # uvicorn's shutdown waits for ``hang`` 30 s (FastMCP's default: 2), far past any SIGKILL
    config = {"timeout_graceful_shutdown": 30}
    server.run("http", host="127.0.0.1", port=port, show_banner=False, uvicorn_config=config)


if __name__ == "__main__":
    _serve()
