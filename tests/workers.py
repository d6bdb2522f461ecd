"""Worker processes for the multi-process tests: run as ``python workers.py PATH K EVERY``.

Each waits for a line on stdin (so that all start together), opens the store, counts K tool
calls flushing every EVERY, closes, and prints the session id it ended with.
"""

from __future__ import annotations

import asyncio
import sys

from aiosessionstore import AsyncSessionStore


async def count(path: str, total: int, every: int) -> str:
    async with AsyncSessionStore(path, flush_interval=3600) as store:
        for number in range(1, total + 1):
            await store.increment_tool_calls()
            if number % every == 0:
                await store.flush()
    return store.session_id


if __name__ == "__main__":
    sys.stdin.readline()
    print(asyncio.run(count(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
