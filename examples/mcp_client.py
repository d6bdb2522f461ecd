"""Launch examples/mcp_server.py over stdio with the SDK's client, use it, then show the session.

    python examples/mcp_client.py [--session PATH] [--calls N]

The server counts every call in its session file; after the client has closed the server,
this prints the persisted session as ``aiosessionstore show`` does. The server's stderr shows
the SDK's tracebacks for the calls that fail on purpose (a division by zero, a rate limit).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path

from mcp import Client, StdioServerParameters

SERVER = Path(__file__).with_name("mcp_server.py")


async def use_server(session: Path, calls: int) -> None:
    server = StdioServerParameters(
        command=sys.executable, args=[str(SERVER), "--session", str(session)]
    )
    async with Client(server) as client:
        for number in range(calls):
            await client.call_tool("search", {"query": f"topic {number}"})
            await client.call_tool("divide", {"a": number, "b": number % 3})  # b = 0 fails
            await client.call_tool("fetch_quote", {"symbol": "ACME"})  # throttled at times
        await client.get_prompt("summarize", {"topic": "sessions"})
    # Leaving the block closed the server's stdin; it flushed its session on the way out.


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--session", type=Path, help="session file (default: a temporary one)")
    parser.add_argument("--calls", type=int, default=5, help="rounds of tool calls")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        session = arguments.session or Path(scratch) / "session.json"
        asyncio.run(use_server(session, arguments.calls))
        command = [sys.executable, "-m", "aiosessionstore", "show", "--path", str(session)]
        subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
