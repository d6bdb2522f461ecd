"""A FastMCP server whose every call is counted in a persistent session (Python 3.11+).

    python examples/fastmcp_server.py [--session PATH] [--http PORT] [--verbose]

The same tools and prompts as examples/mcp_server.py, the same one line. Over stdio by
default; with ``--http PORT``, streamable HTTP on 127.0.0.1 (port 0: any free one). The
session lives in ``~/.aiosessionstore-demo/session.json``, after the server's name, unless
``--session``. Some calls fail on purpose; their tracebacks are shown only with ``--verbose``.
"""

# FastMCP needs Python 3.11: where it is missing, mypy cannot see it (nor its decorators).
# mypy: disable-error-code="import-not-found, untyped-decorator"
from __future__ import annotations

import argparse
import logging

from fastmcp import FastMCP

from aiosessionstore import session_lifespan

NAME = "aiosessionstore-demo"
LANGUAGES = {"fr": "French", "de": "German"}


class RateLimited(Exception):
    """What an upstream API's client raises when it is throttled."""


def build_server(session_path: str | None = None) -> FastMCP:
    """The demo server."""
    # The one line: the store opens with the server, counts every call, and closes after.
    server = FastMCP(
        NAME, lifespan=session_lifespan(session_path, rate_limit_errors=(RateLimited,))
    )

    @server.tool
    async def search(query: str) -> str:
        """Pretend to search; always works."""
        return f"3 results for {query!r}"

    @server.tool
    async def divide(a: float, b: float) -> float:
        """Divide a by b; b = 0 is a ZeroDivisionError, counted as an error."""
        return a / b

    @server.tool
    async def fetch_quote(symbol: str) -> str:
        """Ask a pretend upstream API, which throttles the symbol BUSY: a rate limit."""
        if symbol == "BUSY":
            raise RateLimited("upstream API: too many requests")
        return f"{symbol}: 42.00"

    @server.prompt
    async def summarize(topic: str) -> str:
        """A prompt that always works."""
        return f"Summarize what is known about {topic} in three sentences."

    @server.prompt
    async def translate(text: str, language: str) -> str:
        """A prompt that fails for a language it does not know: an error."""
        return f"Translate into {LANGUAGES[language]}: {text}"

    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--session", help=f"session file (default: ~/.{NAME}/session.json)")
    parser.add_argument("--http", type=int, metavar="PORT", help="serve streamable HTTP")
    parser.add_argument("--verbose", action="store_true", help="log every failure in full")
    arguments = parser.parse_args()
    if not arguments.verbose:
        logging.getLogger("fastmcp").setLevel(logging.CRITICAL)  # each failure, in full
    server = build_server(arguments.session)
    if arguments.http is None:
        server.run("stdio", show_banner=False)
    else:
        server.run("http", host="127.0.0.1", port=arguments.http, show_banner=False)


if __name__ == "__main__":
    main()
