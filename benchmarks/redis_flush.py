"""Flush time of a Redis store against a file store, in the same run; and 8 processes on
one Redis session. ``python benchmarks/redis_flush.py`` (needs redis-server on PATH)."""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from aiosessionstore import AsyncSessionStore
from aiosessionstore._codec import decode

sys.path.insert(0, str(Path(__file__).parent.parent))
from tests.servers import RedisServer

FLUSHES = 500


async def flush_times(store: AsyncSessionStore) -> list[float]:
    """Each flush of one increment, in ms, with the store warmed up."""
    times = []
    async with store:
        for _ in range(FLUSHES + 20):
            await store.increment_tool_calls()
            started = time.perf_counter()
            await store.flush()
            times.append((time.perf_counter() - started) * 1000)
    return times[20:]


def percentile(times: list[float], fraction: float) -> float:
    return sorted(times)[int(fraction * (len(times) - 1))]


def processes(url: str, count: int, increments: int, every: int) -> tuple[float, int]:
    """``count`` count-url workers at once; (seconds, tool calls stored)."""
    worker = Path(__file__).parent.parent / "tests" / "workers.py"
    command = [sys.executable, str(worker), "count-url", url, str(increments), str(every)]
    workers = [
        subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(count)
    ]
    for each in workers:
        assert each.stdout is not None
        assert each.stdout.readline() == "open\n"
    started = time.perf_counter()
    for each in workers:
        assert each.stdin is not None
        each.stdin.write("go\n")
        each.stdin.flush()
    for each in workers:
        each.communicate(timeout=300)
        assert each.returncode == 0
    elapsed = time.perf_counter() - started
    client = redis.Redis.from_url(url)
    data = client.get("aiosessionstore:{octocode}:session")
    client.close()
    assert isinstance(data, bytes)
    return elapsed, decode(data).session.stats.tool_calls


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer(Path(directory) / "redis", durable=True).start()
        try:
            file_store = AsyncSessionStore(
                Path(directory) / "session.json", flush_interval=3600, handle_signals=False
            )
            redis_store = AsyncSessionStore(
                url=server.url, flush_interval=3600, handle_signals=False
            )
            file_ms = asyncio.run(flush_times(file_store))
            redis_ms = asyncio.run(flush_times(redis_store))
            for name, times in (("file", file_ms), ("redis (AOF, fsync always)", redis_ms)):
                median, p99 = statistics.median(times), percentile(times, 0.99)
                print(f"flush, {name}: median {median:.3f} ms, p99 {p99:.3f} ms")
            ratio = statistics.median(redis_ms) / statistics.median(file_ms)
            print(f"redis median / file median: {ratio:.2f}x")
            flush_all = ["redis-cli", "-p", str(server.port), "FLUSHALL"]
            subprocess.run(flush_all, check=True, capture_output=True)
            elapsed, stored = processes(server.url, 8, 5000, 100)
            print(
                f"8 processes x 5,000 (x2 tool calls each), flushing every 100: {elapsed:.2f} s, "
                f"{stored:,} tool calls stored (expected 80,000)"
            )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
