"""The store with no MCP at all: count some work, then show what is on disk.

Run: python examples/basic.py [SESSION_FILE]
"""

from __future__ import annotations

import asyncio
import sys

from aiosessionstore import AsyncSessionStore


async def handle_request(store: AsyncSessionStore, number: int) -> None:
    """A stand-in for a tool handler: every fifth request fails."""
    await store.increment_tool_calls()
    if number % 5 == 0:
        await store.increment_errors()


async def main(path: str | None) -> None:
    async with AsyncSessionStore(path) as store:
        await asyncio.gather(*(handle_request(store, n) for n in range(1, 21)))
        await store.increment_prompt_calls()
    # Leaving the block flushed everything; the id is still readable.
    session = store.session_id
    print(f"session {session} saved to {store.path}")
    async with AsyncSessionStore(store.path) as reopened:
        stats = reopened.session.stats
        print(
            f"tool calls: {stats.tool_calls}, prompt calls: {stats.prompt_calls}, "
            f"errors: {stats.errors}, rate limits: {stats.rate_limits}"
        )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else None))
