"""What counting costs an MCP tool call: ``python benchmarks/mcp_overhead.py [--calls N]``.

One tool, called through an in-memory client (the SDK's ``Client(server)``, FastMCP's
``Client``), on three servers in the same run: with nothing counted (``count_calls=False``),
with ``store.tool_call()`` by hand in the tool, and with the lifespan's counting (the SDK's
``call_tool`` hook, FastMCP's middleware). The variants take turns in rounds, so that drift
hits them alike; each figure is the median time of one call. Then ``store.tool_call()``
alone, against an empty ``async with``.
"""

# FastMCP needs Python 3.11: where it is missing, mypy cannot see it (nor its decorators).
# mypy: disable-error-code="import-not-found, untyped-decorator"
# No ``from __future__ import annotations``: the frameworks read the tools' annotations, and
# the Context classes are imported where the servers are built, after fastmcp is known to be.
import argparse
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from aiosessionstore import AsyncSessionStore, session_lifespan, session_store

ROUNDS = 20
VARIANTS = ("not counted", "store.tool_call()", "counted by the lifespan")
Call = Callable[[], Awaitable[Any]]


def sdk_server(path: Path, variant: str) -> Any:
    from mcp.server.mcpserver import Context, MCPServer

    lifespan = session_lifespan(str(path), count_calls=variant == VARIANTS[2])
    server = MCPServer("bench", lifespan=lifespan)
    if variant == VARIANTS[1]:

        @server.tool()
        async def echo(text: str, ctx: Context) -> str:
            async with session_store(ctx).tool_call("echo"):
                return text

    else:

        @server.tool()
        async def echo(text: str, ctx: Context) -> str:
            return text

    return server


def fastmcp_server(path: Path, variant: str) -> Any:
    from fastmcp import Context, FastMCP

    lifespan = session_lifespan(str(path), count_calls=variant == VARIANTS[2])
    server = FastMCP("bench", lifespan=lifespan)
    if variant == VARIANTS[1]:

        @server.tool
        async def echo(text: str, ctx: Context) -> str:
            async with session_store(ctx).tool_call("echo"):
                return text

    else:

        @server.tool
        async def echo(text: str, ctx: Context) -> str:
            return text

    return server


@asynccontextmanager
async def sdk_caller(server: Any) -> AsyncIterator[Call]:
    from mcp import Client

    async with Client(server) as client:
        yield lambda: client.call_tool("echo", {"text": "hi"})


@asynccontextmanager
async def fastmcp_caller(server: Any) -> AsyncIterator[Call]:
    from fastmcp import Client

    async with Client(server) as client:
        yield lambda: client.call_tool("echo", {"text": "hi"})


async def medians(
    directory: Path,
    build: Callable[[Path, str], Any],
    caller: Callable[[Any], Any],
    calls: int,
) -> dict[str, float]:
    """The median µs of one call, per variant, the variants taking turns in rounds."""
    times: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    async with AsyncExitStack() as stack:
        callers = {
            variant: await stack.enter_async_context(
                caller(build(directory / f"{index}.json", variant))
            )
            for index, variant in enumerate(VARIANTS)
        }
        for call in callers.values():  # warm up: caches, imports, the first lookups
            for _ in range(20):
                await call()
        for _ in range(ROUNDS):
            for variant, call in callers.items():
                for _ in range(calls // ROUNDS):
                    start = time.perf_counter()
                    await call()
                    times[variant].append((time.perf_counter() - start) * 1e6)
    return {variant: statistics.median(values) for variant, values in times.items()}


async def tool_call_alone(path: Path, calls: int) -> tuple[float, float]:
    """Median ns of ``async with store.tool_call(...)``, and of an empty ``async with``."""

    @asynccontextmanager
    async def nothing() -> AsyncIterator[None]:
        yield

    counted: list[float] = []
    bare: list[float] = []
    async with AsyncSessionStore(path, flush_interval=3600) as store:
        for _ in range(ROUNDS):
            for _ in range(calls // ROUNDS):
                start = time.perf_counter()
                async with store.tool_call("echo"):
                    pass
                counted.append((time.perf_counter() - start) * 1e9)
                start = time.perf_counter()
                async with nothing():
                    pass
                bare.append((time.perf_counter() - start) * 1e9)
    return statistics.median(counted), statistics.median(bare)


async def main(calls: int) -> None:
    frameworks: list[tuple[str, Callable[[Path, str], Any], Callable[[Any], Any]]] = [
        ("MCP SDK", sdk_server, sdk_caller)
    ]
    try:
        import fastmcp  # noqa: F401
    except ImportError:
        print("(FastMCP is not installed: it needs Python 3.11 or newer)")
    else:
        frameworks.append(("FastMCP", fastmcp_server, fastmcp_caller))
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        print(f"{calls:,} calls per variant, in-memory client; median per call")
        print(f"{'framework':<10} {'variant':<24} {'µs/call':>8} {'overhead':>9} {'ratio':>6}")
        for name, build, caller in frameworks:
            result = await medians(directory / name, build, caller, calls)
            base = result[VARIANTS[0]]
            for variant, median in result.items():
                extra = median - base
                print(
                    f"{name:<10} {variant:<24} {median:>8.1f} {extra:>+8.1f}µ "
                    f"{median / base:>5.2f}x"
                )
        counted, bare = await tool_call_alone(directory / "alone.json", calls * 10)
        print(f"store.tool_call() alone: {counted:.0f} ns, an empty async with: {bare:.0f} ns")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per variant")
    anyio.run(main, parser.parse_args().calls)
