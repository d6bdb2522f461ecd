"""A small MCP server over stdio that keeps its usage in a persistent session.

Run by examples/mcp_client.py, or by any MCP client:
    python examples/mcp_server.py [--session PATH]
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from mcp.server.mcpserver import Context, MCPServer

from aiosessionstore import session_lifespan, session_store


class RateLimited(Exception):
    """What an upstream API's client raises when it is throttled."""


def build_server(
    session_path: str | None = None,
    app_lifespan: Callable[[Any], AbstractAsyncContextManager[Any]] | None = None,
) -> MCPServer:
    """The demo server; ``app_lifespan`` shows how an app's own lifespan state composes."""
    server = MCPServer(
        "session-demo",
        # One line: the store opens with the server, flushes every 60 s, and on shutdown.
        lifespan=session_lifespan(
            session_path, app_lifespan=app_lifespan, rate_limit_errors=(RateLimited,)
        ),
    )

    @server.tool()
    async def search(query: str, ctx: Context) -> str:
        """Pretend to search; always works."""
        async with session_store(ctx).tool_call("search"):
            return f"3 results for {query!r}"

    @server.tool()
    async def divide(a: float, b: float, ctx: Context) -> float:
        """Divide a by b; b = 0 fails, and the failure is counted as an error."""
        async with session_store(ctx).tool_call("divide"):
            return a / b

    @server.tool()
    async def fetch_quote(symbol: str, ctx: Context) -> str:
        """Call a pretend upstream API that throttles one call in three."""
        async with session_store(ctx).tool_call("fetch_quote"):
            if random.random() < 1 / 3:
                raise RateLimited("upstream API: too many requests")
            return f"{symbol}: 42.00"

    @server.prompt()
    async def summarize(topic: str, ctx: Context) -> str:
        """A prompt; prompt handlers count themselves with increment_prompt_calls()."""
        await session_store(ctx).increment_prompt_calls()
        return f"Summarize what is known about {topic} in three sentences."

    return server


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--session", help="session file (default: ~/.octocode/session.json)")
    build_server(parser.parse_args().session).run("stdio")
