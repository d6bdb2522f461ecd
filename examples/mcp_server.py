"""An MCP server (the SDK's MCPServer) whose every call is counted in a persistent session.

    python examples/mcp_server.py [--session PATH] [--http PORT] [--verbose]

Over stdio by default, for examples/mcp_client.py or any MCP client; with ``--http PORT``,
streamable HTTP on 127.0.0.1 (port 0: any free one; uvicorn logs which). The session lives
in ``~/.aiosessionstore-demo/session.json``, after the server's name, unless ``--session``.
Some calls fail on purpose; their tracebacks are shown only with ``--verbose``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from mcp.server.mcpserver import MCPServer

from aiosessionstore import session_lifespan

NAME = "aiosessionstore-demo"
LANGUAGES = {"fr": "French", "de": "German"}


class RateLimited(Exception):
    """What an upstream API's client raises when it is throttled."""


def build_server(
    session_path: str | None = None,
    app_lifespan: Callable[[Any], AbstractAsyncContextManager[Any]] | None = None,
) -> MCPServer:
    """The demo server; ``app_lifespan`` shows how an app's own lifespan state composes."""
    server = MCPServer(
        NAME,
        # The one line: the store opens with the server, counts every call, and closes after.
        lifespan=session_lifespan(
            session_path, app_lifespan=app_lifespan, rate_limit_errors=(RateLimited,)
        ),
    )

    @server.tool()
    async def search(query: str) -> str:
        """Pretend to search; always works."""
        return f"3 results for {query!r}"

    @server.tool()
    async def divide(a: float, b: float) -> float:
        """Divide a by b; b = 0 is a ZeroDivisionError, counted as an error."""
        return a / b

    @server.tool()
    async def fetch_quote(symbol: str) -> str:
        """Ask a pretend upstream API, which throttles the symbol BUSY: a rate limit."""
        if symbol == "BUSY":
            raise RateLimited("upstream API: too many requests")
        return f"{symbol}: 42.00"

    @server.prompt()
    async def summarize(topic: str) -> str:
        """A prompt that always works."""
        return f"Summarize what is known about {topic} in three sentences."

    @server.prompt()
    async def translate(text: str, language: str) -> str:
        """A prompt that fails for a language it does not know: an error."""
        return f"Translate into {LANGUAGES[language]}: {text}"

    return server


class HideExpectedFailures(logging.Filter):
    """Drops the log records of the failures this demo makes on purpose."""

    EXPECTED = (ZeroDivisionError, RateLimited, KeyError)  # KeyError: translate's

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        while error is not None:
            if isinstance(error, self.EXPECTED) or "no_such_prompt" in str(error):
                return False
            error = error.__cause__ or error.__context__
        return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--session", help=f"session file (default: ~/.{NAME}/session.json)")
    parser.add_argument("--http", type=int, metavar="PORT", help="serve streamable HTTP")
    parser.add_argument("--verbose", action="store_true", help="log every failure in full")
    arguments = parser.parse_args()
    server = build_server(arguments.session)
    if not arguments.verbose:
        logging.getLogger("mcp").setLevel(logging.WARNING)  # not each failure, as INFO
        for handler in logging.getLogger().handlers:  # MCPServer logs through the root's
            handler.addFilter(HideExpectedFailures())
    if arguments.http is None:
        server.run("stdio")
    else:
        server.run("streamable-http", host="127.0.0.1", port=arguments.http)


if __name__ == "__main__":
    main()
