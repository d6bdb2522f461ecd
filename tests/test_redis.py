"""The Redis backend against real redis-servers: the file's format, its merge rules, and each
change applied exactly once through lost replies, cancelled callers and a killed server."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import anyio
import pytest
import redis
import redis.asyncio

from aiosessionstore import (
    AsyncSessionStore,
    CorruptSessionError,
    SessionNotFoundError,
    SessionStoreError,
    UnsupportedVersionError,
    _redis,
)
from aiosessionstore._change import Change, Mode
from aiosessionstore._codec import decode, encode
from aiosessionstore._delta import DELTA_KEY, make_delta, read_delta
from aiosessionstore._file import MAX_FILE_SIZE, FileBackend
from aiosessionstore._latency import bucket
from aiosessionstore._redis import COMPACT_EVERY
from aiosessionstore._redis_scripts import VERSION_1_HEAD
from aiosessionstore._session import (
    ClientStats,
    Counts,
    Record,
    Session,
    SessionStats,
    ToolStats,
    timestamp,
)
from aiosessionstore.redis import RedisBackend

from .conftest import (
    WORKER,
    FakeClock,
    before_script,
    load_the_merge_script,
    posix_only,
    redis_stored,
    start_worker,
    wait_for_line,
)
from .servers import RedisServer, ReplyLoser, free_port

pytestmark = pytest.mark.anyio

BASE = "aiosessionstore:{octocode}"
SESSION, REV = f"{BASE}:session", f"{BASE}:rev"


@pytest.fixture
def direct(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client on the test's empty database, to look at (and spoil) the keys."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def own_server(tmp_path: Path, redis_server: Any) -> Iterator[RedisServer]:
    """A redis-server of the test's own, to stop, pause or kill (durable: AOF, fsync always)."""
    server = RedisServer(tmp_path / "own", durable=True).start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.resume()  # a paused server must take its SIGTERM
    server.stop()


@pytest.fixture
def loser(redis_server: Any, redis_url: str) -> Iterator[ReplyLoser]:
    """A proxy to the test's empty database that can hold or lose the server's replies."""
    proxy = ReplyLoser(redis_server.port)
    yield proxy
    proxy.close()


#: Ways to make a server stall while replies time out: commands sent meanwhile run after it.
STALLS: dict[str, Callable[[redis.Redis], object]] = {
    "debug-sleep": lambda client: client.execute_command("DEBUG", "SLEEP", "0.3"),  # type: ignore[no-untyped-call]
    "client-pause-write": lambda client: client.client_pause(300, all=False),
}


def store_at(url: str, **options: Any) -> AsyncSessionStore:
    return AsyncSessionStore(url=url, flush_interval=3600, handle_signals=False, **options)


def stored(client: redis.Redis) -> Record:
    """The session as a store reads it: the value with the deltas folded in."""
    record = redis_stored(client)
    assert record is not None, "nothing stored"
    return record


def aside_keys(client: redis.Redis) -> list[bytes]:
    return sorted(_bytes(key) for key in client.keys(f"{BASE}:session:corrupt-*"))


def _bytes(value: object) -> bytes:
    assert isinstance(value, bytes)
    return value


def read_until(worker: subprocess.Popen[str], prefix: str) -> list[str]:
    """The worker's lines up to and including the first that starts with ``prefix``."""
    assert worker.stdout is not None
    lines = []
    while True:
        line = worker.stdout.readline()
        assert line, f"the worker ended before {prefix!r}: {worker.communicate()[1]}"
        lines.append(line.strip())
        if line.startswith(prefix):
            return lines


def run_workers(
    url: str, processes: int, increments: int, every: int, pause: bool = False
) -> list[subprocess.Popen[str]]:
    """Start count-url workers, wait until each has opened the store, and let them go."""
    workers = [
        start_worker("count-url", url, increments, every, "yes" if pause else "no")
        for _ in range(processes)
    ]
    for worker in workers:
        read_until(worker, "open")
    return workers


def go(workers: list[subprocess.Popen[str]]) -> None:
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()


def finish(workers: list[subprocess.Popen[str]]) -> set[str]:
    """Wait for every worker; the session ids they ended with."""
    return finish_counting_failures(workers)[0]


def finish_counting_failures(workers: list[subprocess.Popen[str]]) -> tuple[set[str], int]:
    """Wait for every worker; the session ids they ended with, and how many flushes failed."""
    ids, failed = set(), 0
    for worker in workers:
        out, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        ids.add(out.splitlines()[-1].split()[1])
        failed += out.splitlines().count("failed")
    return ids, failed


def assert_counted(client: redis.Redis, processes: int, increments: int) -> None:
    """Each worker's increments and timed calls, each counted exactly once."""
    session = stored(client).session
    calls = processes * increments
    assert session.stats.tool_calls == 2 * calls
    assert session.tools["search"].calls == calls
    assert sum(session.tools["search"].latency.values()) == calls
    assert session.clients["worker"].tool_calls == calls


class TestFormat:
    async def test_the_value_is_the_files_bytes(self, redis_url: str, direct: redis.Redis) -> None:
        """The stored value decodes, and is exactly what encode writes for that record."""
        async with store_at(redis_url) as store:
            await store.increment_tool_calls(3)
            async with store.tool_call("search", client="cli"):
                pass
        data = direct.get(SESSION)
        assert isinstance(data, bytes)
        record = decode(data)
        assert encode(record) == data
        assert record.session.session_id == store.session_id
        assert stored(direct).session.stats.tool_calls == 4  # with the deltas folded in
        assert json.loads(encode(stored(direct)))["tools"]["search"]["calls"] == 1

    async def test_keys_share_one_hash_tag(self, redis_url: str, direct: redis.Redis) -> None:
        """Every key is under aiosessionstore:{app}: one cluster slot."""
        async with store_at(redis_url, app_name="my-tool") as store:
            await store.increment_tool_calls()
        keys = {_bytes(key).decode() for key in direct.keys("*")}
        assert {"aiosessionstore:{my-tool}:session", "aiosessionstore:{my-tool}:rev"} <= keys
        assert all(key.startswith("aiosessionstore:{my-tool}:") for key in keys)
        applied = [key for key in keys if ":applied:" in key]
        assert len(applied) == 1
        assert 0 < direct.pttl(applied[0]) <= 7 * 24 * 3600 * 1000

    async def test_read_and_peek(self, redis_url: str, direct: redis.Redis) -> None:
        """read() and peek() return the stored session; with none, SessionNotFoundError."""
        backend = RedisBackend.from_url(redis_url)
        try:
            with pytest.raises(SessionNotFoundError):
                await asyncio.to_thread(backend.peek)
            async with store_at(redis_url) as store:
                await store.increment_prompt_calls(2)
            read, peeked = await asyncio.to_thread(lambda: (backend.read(), backend.peek()))
            assert read == peeked == stored(direct)
            assert read.session.stats.prompt_calls == 2
            with pytest.raises(RuntimeError, match="no running event loop"):
                backend.read()
        finally:
            await asyncio.to_thread(backend.close)


class TestBadValues:
    async def test_a_value_too_large_is_moved_aside(
        self, redis_url: str, direct: redis.Redis
    ) -> None:
        """A value past the size bound is renamed to a key of its own, never read whole."""
        value = b"x" * (MAX_FILE_SIZE + 1)
        direct.set(SESSION, value)  # set by hand: the revision does not change
        async with store_at(redis_url) as store:
            await store.increment_tool_calls()
        [aside] = aside_keys(direct)
        assert direct.get(aside) == value
        assert stored(direct).session.session_id == store.session_id

    async def test_a_key_of_the_wrong_type_is_moved_aside(
        self, redis_url: str, direct: redis.Redis
    ) -> None:
        """A hash where the session should be is renamed, never overwritten."""
        direct.hset(SESSION, "a", "b")
        async with store_at(redis_url):
            pass
        [aside] = aside_keys(direct)
        assert direct.hgetall(aside) == {b"a": b"b"}
        assert stored(direct).session.stats == SessionStats()

    async def test_spoiled_after_a_write_is_moved_aside(
        self, redis_url: str, direct: redis.Redis
    ) -> None:
        """A value replaced by hand after our write (same revision) is not overwritten."""
        async with store_at(redis_url) as store:
            await store.increment_tool_calls()
            await store.flush()
            direct.set(SESSION, b"[]")
            await store.increment_tool_calls()
        assert [direct.get(key) for key in aside_keys(direct)] == [b"[]"]
        assert stored(direct).session.session_id == store.session_id
        assert stored(direct).session.stats.tool_calls == 2

    def test_read_moves_aside_and_peek_does_not(self, redis_url: str, direct: redis.Redis) -> None:
        """peek leaves a corrupt value in place; read moves it aside and names the key."""
        direct.set(SESSION, b"{")
        backend = RedisBackend.from_url(redis_url)
        try:
            with pytest.raises(CorruptSessionError, match="left in place"):
                backend.peek()
            assert direct.get(SESSION) == b"{"
            with pytest.raises(CorruptSessionError, match="corrupt-") as caught:
                backend.read()
            [aside] = aside_keys(direct)
            assert aside.decode() in str(caught.value)
            assert direct.get(SESSION) is None
        finally:
            backend.close()

    @pytest.mark.parametrize("rev", [b"many", b"0123", b"99999999999999999999", b"-1"])
    async def test_a_bad_revision_is_refused_before_any_write(
        self, redis_url: str, direct: redis.Redis, rev: bytes
    ) -> None:
        """A revision INCR cannot take is an error at every flush, and nothing is written:
        a script that wrote first and failed at INCR would count each retry again."""
        async with store_at(redis_url) as store:
            await store.increment_tool_calls(10)
            await store.flush()
            before = direct.get(SESSION)
            direct.set(REV, rev)
            await store.increment_tool_calls(5)
            for _ in range(3):
                with pytest.raises(SessionStoreError, match="holds no revision"):
                    await store.flush()
            assert direct.get(SESSION) == before
            direct.set(REV, b"7")  # repaired by hand
        assert stored(direct).session.stats.tool_calls == 15

    @pytest.mark.parametrize("number", [b"1e999", b"inf", b"0x10", b"12.5"])
    async def test_a_bad_change_number_is_refused(
        self, redis_url: str, direct: redis.Redis, number: bytes
    ) -> None:
        """An applied-number key Lua would read as infinity (or not at all) is an error: it
        must not make every later change look applied, dropping its counts."""
        async with store_at(redis_url) as store:
            await store.increment_tool_calls(2)
            await store.flush()
            [applied] = direct.keys(f"{BASE}:applied:*")
            direct.set(applied, number)
            await store.increment_tool_calls(3)
            with pytest.raises(SessionStoreError, match="holds no change number"):
                await store.flush()
            direct.set(applied, b"1")  # repaired by hand
        assert stored(direct).session.stats.tool_calls == 5

    @pytest.mark.parametrize("write", ["flush", "reset_stats"])
    async def test_a_change_number_set_ahead_loses_nothing(
        self, redis_url: str, direct: redis.Redis, write: str
    ) -> None:
        """An applied-number key set ahead of its writer by hand says that changes it never
        sent were applied: each such write raises, the counts stay pending, and once the key
        is gone the write lands (a flush pushes its delta; a reset is a compare-and-set)."""
        async with store_at(redis_url) as store:
            await store.increment_tool_calls(2)
            await store.flush()
            [applied] = direct.keys(f"{BASE}:applied:*")
            direct.set(applied, b"999999999999999")
            await store.increment_tool_calls(3)
            for _ in range(2):  # a flush sends its change again: it is still never sent
                with pytest.raises(SessionStoreError, match="was never sent"):
                    await getattr(store, write)()
            assert calls_stored(direct) == 2
            direct.delete(applied)
            await getattr(store, write)()
            assert calls_stored(direct) == (5 if write == "flush" else 0)

    @pytest.mark.parametrize(
        "count", [b"many", b"1e999", b"-1", b"0012", b"9007199254740992", b"99999999999999999"]
    )
    async def test_a_bad_count_of_pushes_is_refused_before_any_write(
        self, redis_url: str, direct: redis.Redis, count: bytes
    ) -> None:
        """A :pushed key that holds no count INCR takes is an error at every flush, and
        nothing is pushed; repaired by hand, every count lands once."""
        async with store_at(redis_url) as store:
            await store.increment_tool_calls(10)
            await store.flush()
            before = direct.lrange(DELTAS, 0, -1)
            direct.set(f"{BASE}:pushed", count)
            await store.increment_tool_calls(5)
            with pytest.raises(SessionStoreError, match="holds no count of pushes"):
                await store.flush()
            assert direct.lrange(DELTAS, 0, -1) == before
            direct.set(f"{BASE}:pushed", b"3")  # repaired by hand: the list is read afresh
        assert stored(direct).session.stats.tool_calls == 15

    async def test_a_huge_value_set_between_flushes_is_not_read(
        self, redis_url: str, direct: redis.Redis
    ) -> None:
        """A value past the bound, set by hand after our write, is moved aside unread."""
        async with store_at(redis_url) as store:
            await store.increment_tool_calls()
            await store.flush()
            huge = b"x" * (MAX_FILE_SIZE + 1)
            direct.set(SESSION, huge)
            slow_before = len(direct.slowlog_get(128))
            await store.increment_tool_calls()
        [aside] = aside_keys(direct)
        assert direct.strlen(aside) == len(huge)
        assert stored(direct).session.stats.tool_calls == 2
        assert slow_before == len(direct.slowlog_get(128))  # no script read it whole


def merge(tool_ms: float, calls: int) -> Counts:
    """Counts with a tool, a prompt and a client, timed into latency buckets."""
    tool = ToolStats(
        calls, 1, 1, tool_ms * calls, tool_ms, MappingProxyType({bucket(tool_ms): calls})
    )
    return Counts(
        SessionStats(calls, 1, 1, 1),
        MappingProxyType({"search": tool, f"only-{calls}": tool}),
        MappingProxyType({"summarize": tool}),
        MappingProxyType({"cli": ClientStats(calls, 1)}),
    )


class TestMerging:
    def test_stats_merge_as_in_the_file(self, redis_url: str, tmp_path: Path) -> None:
        """The same changes give the same record in Redis as in the file."""
        now = timestamp(1_764_000_000)
        known = Record(Session.new(now))
        changes = [
            Change(Mode.MERGE, merge(ms, calls), now, known, False, 64, writer, 1)
            for ms, calls, writer in ((3.0, 2, "a"), (250.0, 5, "b"), (0.5, 1, "c"))
        ]
        file = FileBackend(tmp_path / "session.json")
        backend = RedisBackend.from_url(redis_url)
        try:
            for change in changes:
                file.commit(change)
                backend.commit(change)
            assert backend.read() == file.read()
            assert backend.read().session.tools["search"].calls == 8
        finally:
            backend.close()


class TestExactlyOnce:
    async def test_a_lost_reply_is_applied_once(
        self, loser: ReplyLoser, direct: redis.Redis
    ) -> None:
        """The server applies a merge whose reply is lost; sent again, it is not re-applied."""
        async with store_at(loser.url) as store:
            await load_the_merge_script(store)
            await store.increment_tool_calls(5)
            loser.lose_next_reply()
            with pytest.raises(SessionStoreError):
                await store.flush()
            assert stored(direct).session.stats.tool_calls == 6  # applied all the same
            rev = direct.get(REV)
            assert store.session.stats.tool_calls == 6
            await store.flush()  # sends the same change again: already applied
            assert direct.get(REV) == rev
            assert stored(direct).session.stats.tool_calls == 6
            await store.increment_tool_calls()
        assert stored(direct).session.stats.tool_calls == 7
        assert loser.lost == 1

    async def test_a_cancelled_caller_does_not_cancel_the_write(
        self, loser: ReplyLoser, direct: redis.Redis
    ) -> None:
        """A flush cancelled while its request is at the server still lands, once."""
        async with store_at(loser.url) as store:
            await store.increment_tool_calls(3)
            loser.hold()
            flush = asyncio.ensure_future(store.flush())
            assert await asyncio.to_thread(loser.request_seen.wait, 10)
            flush.cancel()
            with pytest.raises(asyncio.CancelledError):
                await flush
            loser.release()
            await store.increment_tool_calls()
        assert stored(direct).session.stats.tool_calls == 4

    async def test_a_cancelled_caller_and_a_lost_reply(
        self, loser: ReplyLoser, direct: redis.Redis
    ) -> None:
        """Cancelled, and its reply lost: sent again at the next flush, applied once."""
        async with store_at(loser.url) as store:
            await load_the_merge_script(store)
            await store.increment_tool_calls(2)
            loser.hold()
            loser.lose_next_reply()
            flush = asyncio.ensure_future(store.flush())
            assert await asyncio.to_thread(loser.request_seen.wait, 10)
            flush.cancel()
            with pytest.raises(asyncio.CancelledError):
                await flush
            loser.release()
            await store.increment_tool_calls()
        assert stored(direct).session.stats.tool_calls == 4
        assert loser.lost == 1

    @pytest.mark.slow
    def test_processes_add_up_through_lost_replies(
        self, loser: ReplyLoser, direct: redis.Redis
    ) -> None:
        """4 processes, one reply in 5 lost after the server acted: totals exact."""
        workers = run_workers(loser.url, processes=4, increments=200, every=10)
        loser.lose_every = 5
        go(workers)
        ids = finish(workers)
        assert loser.lost > 10
        assert ids == {stored(direct).session.session_id}
        assert_counted(direct, 4, 200)

    @pytest.mark.slow
    @pytest.mark.parametrize("stall", list(STALLS))
    def test_processes_add_up_through_a_stalled_server(self, tmp_path: Path, stall: str) -> None:
        """Replies that time out while the server stalls, their writes run after: exact."""
        server = RedisServer(tmp_path, extra=("--enable-debug-command", "yes")).start()
        try:
            client = redis.Redis.from_url(server.url)
            url = server.url + "?socket_timeout=0.1"
            workers = run_workers(url, processes=4, increments=200, every=10)
            go(workers)
            for _ in range(3):
                read_until(workers[0], "flushed")
                STALLS[stall](client)
            _, failed = finish_counting_failures(workers)
            assert_counted(client, 4, 200)
            print(f"{failed} flushes timed out")  # shown with -s: the faults happened
            client.close()
        finally:
            server.stop()

    @pytest.mark.slow
    def test_a_killed_and_restarted_server(self, own_server: RedisServer) -> None:
        """SIGKILL of a durable redis-server mid-run, then a restart: totals exact."""
        workers = run_workers(own_server.url, processes=3, increments=300, every=10, pause=True)
        go(workers)
        read_until(workers[0], "flushed 50")
        own_server.kill()
        for worker in workers:
            read_until(worker, "counted")
        own_server.restart()
        go(workers)
        finish(workers)
        client = redis.Redis.from_url(own_server.url)
        try:
            assert_counted(client, 3, 300)
        finally:
            client.close()


class TestOutages:
    async def test_counts_wait_for_redis_to_return(self, own_server: RedisServer) -> None:
        """Flushes fail while Redis is down; the counts show, and land once it is back."""
        async with store_at(own_server.url) as store:
            own_server.kill()
            for _ in range(3):
                await store.increment_tool_calls(2)
                with pytest.raises(SessionStoreError, match=r"127\.0\.0\.1"):
                    await store.flush()
            assert store.session.stats.tool_calls == 6
            await asyncio.to_thread(own_server.restart)
            await store.flush()
        client = redis.Redis.from_url(own_server.url)
        try:
            assert stored(client).session.stats.tool_calls == 6
        finally:
            client.close()

    async def test_a_delete_while_redis_is_down_keeps_the_counts(
        self, own_server: RedisServer
    ) -> None:
        """A delete that fails while Redis is down deletes nothing and drops nothing: the
        counts of the flush that failed before it land in the same session once it is back."""
        async with store_at(own_server.url) as store:
            first = store.session_id
            own_server.kill()
            await store.increment_tool_calls(7)
            with pytest.raises(SessionStoreError):
                await store.flush()
            with pytest.raises(SessionStoreError):
                await store.delete()
            assert store.session.stats.tool_calls == 7
            await asyncio.to_thread(own_server.restart)
            await store.increment_tool_calls()
            await store.flush()
        client = redis.Redis.from_url(own_server.url)
        try:
            assert stored(client).session.session_id == first
            assert stored(client).session.stats.tool_calls == 8
        finally:
            client.close()

    def test_a_failed_flush_at_exit_promises_no_later(self, own_server: RedisServer) -> None:
        """The exit hook's flush that fails with Redis down says its counts are not known to
        be saved, not that they will be written later: no later comes."""
        worker = start_worker("never-closed", own_server.url, "13", "yes")
        wait_for_line(worker, "counted")
        own_server.kill()
        _, err = worker.communicate("\n", timeout=60)
        assert worker.returncode == 0, err
        assert "failed; its counts are not known to be saved (13 tool calls" in err
        assert "later" not in err

    async def test_memory_does_not_grow_with_the_counts(self, own_server: RedisServer) -> None:
        """Pending counts held through an outage take the same memory for 10k as for 100k."""
        async with store_at(own_server.url) as store:
            own_server.kill()

            async def peak(increments: int) -> int:
                tracemalloc.start()
                try:
                    for number in range(increments):
                        await store.increment_tool_calls()
                        if number % 5000 == 0:
                            with pytest.raises(SessionStoreError):
                                await store.flush()
                    return tracemalloc.get_traced_memory()[1]
                finally:
                    tracemalloc.stop()

            small, large = await peak(10_000), await peak(100_000)
            assert large < small * 2 + 64 * 1024
            await asyncio.to_thread(own_server.restart)
        client = redis.Redis.from_url(own_server.url)
        try:
            assert stored(client).session.stats.tool_calls == 110_000
        finally:
            client.close()

    async def test_unreachable_at_open(self) -> None:
        """A server that accepts and never answers fails the open within its timeouts."""
        with socket.create_server(("127.0.0.1", 0)) as silent:
            port = silent.getsockname()[1]
            url = f"redis://127.0.0.1:{port}/0?socket_connect_timeout=0.5&socket_timeout=0.5"
            with anyio.fail_after(30), pytest.raises(SessionStoreError):
                await store_at(url, lock_timeout=60).open()  # bounded by 0.5 s, not by 60

    async def test_refused_at_open(self) -> None:
        """No server at all: SessionStoreError at once, naming where, never the password."""
        with socket.create_server(("127.0.0.1", 0)) as closed:
            port = closed.getsockname()[1]
        url = f"redis://user:s3cret@127.0.0.1:{port}/0"
        with (
            anyio.fail_after(30),
            pytest.raises(SessionStoreError, match=rf"127\.0\.0\.1:{port}") as caught,
        ):
            await store_at(url, lock_timeout=60).open()
        assert "s3cret" not in str(caught.value)

    async def test_close_is_bounded_against_a_paused_server(
        self, own_server: RedisServer, clock: FakeClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A server that stopped answering holds the close for close_timeout, not its own
        60 s reply timeout; the exit hook's flush lands the count, once, when it answers."""
        store = store_at(own_server.url + "?socket_timeout=60", close_timeout=0.3, clock=clock)
        await store.open()
        await store.increment_tool_calls()
        own_server.pause()
        with anyio.fail_after(30):
            await store.aclose()
        assert "took longer than 0.3 s" in caplog.text
        own_server.resume()
        await asyncio.to_thread(store._flush_sync)  # what the exit hook runs
        direct = redis.Redis.from_url(own_server.url)
        try:
            assert stored(direct).session.stats.tool_calls == 1
        finally:
            direct.close()


class TestClose:
    def test_a_process_that_ends_after_its_block_leaves_the_session_whole(
        self, redis_url: str, direct: redis.Redis
    ) -> None:
        """A process that ends right after its store's block leaves the list folded into
        the value: the close waited for the fold."""
        done = subprocess.run(
            [sys.executable, str(WORKER), "flush-and-leave", redis_url, "5"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert direct.llen(DELTAS) == 0
        assert decode(_bytes(direct.get(SESSION))).session.stats.tool_calls == 5

    async def test_the_close_waits_for_the_fold_at_most_close_timeout(
        self,
        redis_url: str,
        direct: redis.Redis,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """aclose() waits for the backend's close (the fold) after the final flush, within
        close_timeout: a close held past it is logged, and lands in the background."""
        store = store_at(redis_url, close_timeout=0.3)
        await store.open()
        await store.increment_tool_calls()
        await store.flush()
        backend = store._writer.backend
        close = backend.close
        held, release, ended = threading.Event(), threading.Event(), threading.Event()

        def held_close() -> None:
            held.set()
            release.wait(30)
            close()
            ended.set()

        monkeypatch.setattr(backend, "close", held_close)
        with anyio.fail_after(30):
            await store.aclose()
        assert held.is_set()
        assert "closing redis://" in caplog.text
        assert "took longer than 0.3 s" in caplog.text
        release.set()
        assert await asyncio.to_thread(ended.wait, 30)
        assert direct.llen(DELTAS) == 0
        assert decode(_bytes(direct.get(SESSION))).session.stats.tool_calls == 1


class TestAfterClose:
    def test_the_exit_flush_after_close(self, redis_url: str, direct: redis.Redis) -> None:
        """A commit after close (the exit hook's, once close gave up) opens a new loop."""
        now = timestamp(1_764_000_000)
        known = Record(Session.new(now))

        def change(number: int) -> Change:
            return Change(Mode.MERGE, Counts(SessionStats(1)), now, known, False, 64, "w", number)

        backend = RedisBackend.from_url(redis_url)
        backend.commit(change(1))
        backend.close()
        assert backend.commit(change(2)).session.stats.tool_calls == 2
        assert backend.commit(change(2)).session.stats.tool_calls == 2  # sent again: once
        backend.close()
        assert stored(direct).session.stats.tool_calls == 2


class TestConfiguration:
    def test_the_url_variable(self, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
        """$OCTOCODE_SESSION_URL puts a store with no path in Redis."""
        monkeypatch.setenv("OCTOCODE_SESSION_URL", redis_url)
        store = AsyncSessionStore()
        assert isinstance(store.backend, RedisBackend)
        assert store.path is None
        assert store.backend.description.endswith("key aiosessionstore:{octocode}")

    def test_path_and_url_together(self, redis_url: str, tmp_path: Path) -> None:
        """path= and url= together are refused."""
        with pytest.raises(ValueError, match="not path and url"):
            AsyncSessionStore(tmp_path / "s.json", url=redis_url)

    @pytest.mark.parametrize("path", ["/abc", "/1x", "/0/extra", "/-1"])
    def test_a_database_that_is_no_number(self, path: str) -> None:
        """redis-py reads /abc as database 0; a session URL refuses it."""
        with pytest.raises(ValueError, match="database number"):
            AsyncSessionStore(url=f"redis://127.0.0.1:6379{path}")

    @pytest.mark.parametrize("url", ["redis://", "redis:///0", "redis://:6379/0", "rediss://"])
    def test_a_url_without_a_host(self, url: str) -> None:
        """redis-py would connect to localhost:6379 (an empty ``${HOST}``, say): refused."""
        with pytest.raises(ValueError, match="must name its host"):
            AsyncSessionStore(url=url)

    def test_a_database_named_twice(self) -> None:
        """A database in the path and another in the query (redis-py takes the query's)."""
        with pytest.raises(ValueError, match="database 2 in its path and 3 in its query"):
            AsyncSessionStore(url="redis://127.0.0.1:6379/2?db=3")
        with pytest.raises(ValueError, match="database 2 in its path and ² in its query"):
            AsyncSessionStore(url="redis://127.0.0.1:6379/2?db=²")
        for same in ("2", "02"):  # the same database: no doubt
            AsyncSessionStore(url=f"redis://127.0.0.1:6379/2?db={same}")

    def test_a_bad_url_variable_is_named(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A bad URL in $OCTOCODE_SESSION_URL says where it came from."""
        monkeypatch.setenv("OCTOCODE_SESSION_URL", "http://127.0.0.1:6379/0")
        with pytest.raises(ValueError, match=r"^\$OCTOCODE_SESSION_URL: a session URL must"):
            AsyncSessionStore()

    def test_decoded_responses_are_refused(self) -> None:
        """The session is bytes: a client that decodes replies to str would break on any
        value that is not UTF-8, so it is refused up front, by URL or by client."""
        with pytest.raises(ValueError, match="decode_responses"):
            AsyncSessionStore(url="redis://127.0.0.1:6379/0?decode_responses=true")
        client = redis.asyncio.Redis(decode_responses=True)
        with pytest.raises(ValueError, match="decode_responses"):
            RedisBackend(client)

    @pytest.mark.parametrize("url", ["http://localhost", "unix:///tmp/redis.sock", "localhost"])
    def test_other_schemes(self, url: str) -> None:
        """Only redis:// and rediss:// are session URLs."""
        with pytest.raises(ValueError, match="redis://"):
            AsyncSessionStore(url=url)

    @pytest.mark.parametrize(
        "url",
        [
            "redis://u:4711/S3CRET@localhost/0",
            "redis://:ab?S3CRET=x@localhost/0",
            "redis://:ab#S3CRET@localhost/0",
            "redis://localhost/0?ssl_ca_certs=/S3CRET@x",
        ],
    )
    def test_an_at_after_the_host(self, url: str) -> None:
        """A / ? or # in a password not percent-encoded is refused before any piece of it is
        taken for the host, port, database or an option, and shown in a message."""
        with pytest.raises(ValueError, match="percent-encode") as caught:
            RedisBackend.from_url(url)
        assert "S3CRET" not in str(caught.value)
        assert "4711" not in str(caught.value)

    @pytest.mark.parametrize("query", ["no_such_option=1", "ssl_cert_reqs=none"])
    def test_an_option_redis_py_does_not_take(self, query: str) -> None:
        """An unknown option (a TLS one on redis://, say) is a ValueError at once, not a
        TypeError at the first command."""
        with pytest.raises(ValueError, match="option redis-py does not take"):
            RedisBackend.from_url(f"redis://localhost/0?{query}")

    @pytest.mark.parametrize(
        ("url", "why"),
        [
            ("redis://localhost/0?protocol=9", "option value redis-py refuses"),
            ("rediss://localhost/0?ssl_cert_reqs=bogus", "option value redis-py refuses"),
            ("redis://localhost/0?encoding=bogus", "UTF-8"),
            ("redis://localhost/0?encoding=utf-16", "UTF-8"),
        ],
    )
    def test_an_option_value_redis_py_or_the_session_refuses(self, url: str, why: str) -> None:
        """A value redis-py refuses only when it connects, or an encoding other than UTF-8
        (the scripts and keys go through it), is a ValueError at once."""
        with pytest.raises(ValueError, match=why):
            AsyncSessionStore(url=url)

    @pytest.mark.parametrize("name", ["a{b", "a}b", ""])
    def test_app_names_that_break_the_hash_tag(self, name: str) -> None:
        """An app name with braces would split the keys across slots."""
        with pytest.raises(ValueError, match="app_name"):
            RedisBackend.from_url("redis://localhost", app_name=name)

    def test_no_password_in_description(self) -> None:
        """The description and repr name the server and keys, not the password."""
        backend = RedisBackend.from_url("rediss://alice:s3cret@example.invalid:6380/2")
        assert (
            backend.description == "rediss://example.invalid:6380/2 key aiosessionstore:{octocode}"
        )
        assert "s3cret" not in repr(backend)
        backend.close()

    async def test_acl_user_and_password(self, redis_url: str, direct: redis.Redis) -> None:
        """An ACL user and password in the URL; a wrong password is a clean error."""
        direct.acl_setuser(
            "fleet", enabled=True, passwords=["+pw-ok"], keys=["*"], commands=["+@all"]
        )
        host_and_db = redis_url.removeprefix("redis://")
        async with store_at(f"redis://fleet:pw-ok@{host_and_db}") as store:
            await store.increment_tool_calls()
        assert stored(direct).session.stats.tool_calls == 1
        with pytest.raises(SessionStoreError) as caught:
            await store_at(f"redis://fleet:pw-bad@{host_and_db}").open()
        assert "pw-bad" not in str(caught.value)

    def test_import_error_without_redis(self) -> None:
        """Without redis-py, importing the backend says what to install."""
        code = "import sys; sys.modules['redis'] = None; import aiosessionstore.redis"
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert result.returncode != 0
        assert "pip install 'aiosessionstore[redis]'" in result.stderr


class TestTLS:
    async def test_rediss_with_a_ca_of_its_own(self, tmp_path: Path, redis_server: Any) -> None:
        """rediss:// with ssl_ca_certs in the URL, against a TLS-only redis-server."""
        if shutil.which("openssl") is None:
            pytest.skip("openssl is not installed")
        cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
        await asyncio.to_thread(
            subprocess.run,
            [
                "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                "-keyout", str(key), "-out", str(cert),
            ],
            check=True, capture_output=True,
        )  # fmt: skip
        port = free_port()
        tls = (
            "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert),
            "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
            "--tls-auth-clients", "no",
        )  # fmt: skip
        server = await asyncio.to_thread(RedisServer(tmp_path / "tls", extra=tls).start)
        try:
            url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}"
            async with store_at(url) as store:
                await store.increment_tool_calls(2)
            assert store.backend.description.startswith(f"rediss://127.0.0.1:{port}/0 ")
            backend = RedisBackend.from_url(url)
            try:
                record = await asyncio.to_thread(backend.peek)
            finally:
                await asyncio.to_thread(backend.close)
            assert record.session.stats.tool_calls == 2
            with pytest.raises(SessionStoreError):  # not trusted without the CA
                await store_at(f"rediss://127.0.0.1:{port}/0").open()
        finally:
            await asyncio.to_thread(server.stop)


@pytest.mark.slow
class TestCluster:
    async def test_a_store_on_a_cluster(self, redis_cluster: Any) -> None:
        """On three primaries: every key in one slot, and the counts add up."""
        port = redis_cluster.first.port
        client = redis.asyncio.RedisCluster(host="127.0.0.1", port=port)
        backend = RedisBackend(client, app_name=f"cluster-{time.monotonic_ns()}")
        async with AsyncSessionStore(backend=backend, flush_interval=3600) as store:
            await store.increment_tool_calls(2)
            await store.flush()
            await store.increment_tool_calls(3)
        check = redis.RedisCluster(host="127.0.0.1", port=port)
        try:
            tag = f"aiosessionstore:{{{backend.app_name}}}"
            keys = [_bytes(key).decode() for key in check.keys(target_nodes="all")]
            ours = [key for key in keys if key.startswith(tag)]
            names = {key.removeprefix(tag).split(":")[1] for key in ours}
            every = {"session", "rev", "applied", "deltas", "pushed"}
            assert {"session", "rev", "applied"} <= names <= every
            slots = {check.cluster_keyslot(key) for key in ours}
            assert len(slots) == 1
            decode(_bytes(check.get(f"{tag}:session")))  # the file's bytes, as of the last fold
        finally:
            check.close()
        reader = RedisBackend(
            redis.asyncio.RedisCluster(host="127.0.0.1", port=port), app_name=backend.app_name
        )
        try:
            record = await asyncio.to_thread(reader.peek)
        finally:
            await asyncio.to_thread(reader.close)
        assert record.session.stats.tool_calls == 5


@posix_only
class TestShutdown:
    @pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
    def test_the_signal_flushes_to_redis_then_kills(
        self, redis_url: str, direct: redis.Redis, signum: int
    ) -> None:
        """SIGTERM or SIGHUP stores the pending counts in Redis, then the process dies of it."""
        worker = start_worker("wait-for-signal", redis_url, "25")
        wait_for_line(worker, "ready")
        worker.send_signal(signum)
        _, err = worker.communicate(timeout=30)
        assert worker.returncode == -signum, err
        assert stored(direct).session.stats.tool_calls == 25

    def test_an_unclosed_store_is_flushed_to_redis_at_exit(
        self, redis_url: str, direct: redis.Redis
    ) -> None:
        """A store whose loop was abandoned is flushed by the exit hook, on its own loop."""
        done = subprocess.run(
            [sys.executable, str(WORKER), "never-closed", redis_url, "13"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "never closed" in done.stderr
        assert stored(direct).session.stats.tool_calls == 13


DELTAS = f"{BASE}:deltas"


def one_call(
    writer: str, number: int, known: Record, saved: bool = True, calls: int = 1, **more: Any
) -> Change:
    """A merge of one tool call (or ``calls``, and ``more`` counts) by ``writer``."""
    counts = Counts(SessionStats(calls), **more)
    return Change(
        Mode.MERGE, counts, known.session.last_active_at, known, saved, 64, writer, number
    )


class TestDeltas:
    """Merges appended to :deltas and folded into :session by compare-and-set."""

    def test_a_delta_is_a_record_the_codec_reads(self) -> None:
        """A delta is the codec's JSON: the counts, the session to start from where none is
        stored, and the marker key; read back, it is what its writer folds."""
        known = Record(Session.new(timestamp(1_764_000_000)))
        made = make_delta(one_call("w", 1, known, saved=False), "here")
        assert made is not None
        data, delta = made
        document = json.loads(data)
        assert document["sessionId"] == known.session.session_id
        assert document["stats"]["toolCalls"] == 1
        assert document[DELTA_KEY] == {"lastActiveAt": "2025-11-24T16:00:00.000Z", "maxTools": 64}
        assert read_delta(data) == delta
        assert delta.onto(None) == one_call("w", 1, known, saved=False).apply(known)
        # A saved session that is gone starts a new one: its id is chosen once, in the bytes.
        saved = make_delta(one_call("w", 1, known), "here")
        assert saved is not None
        assert json.loads(saved[0])["sessionId"] != known.session.session_id
        # An unsaved session with counts of its own cannot be said as a delta.
        counted = Record(replace(known.session, stats=SessionStats(5)))
        assert make_delta(one_call("w", 1, counted, saved=False), "here") is None

    def test_deltas_fold_in_order(
        self, redis_url: str, direct: redis.Redis, tmp_path: Path
    ) -> None:
        """Merges pushed by several writers fold in the order pushed, by the file's rules:
        with one name kept apart, the first tool pushed keeps its name."""
        known = Record(Session.new(timestamp(1_764_000_000)))
        tools = [MappingProxyType({name: ToolStats(1)}) for name in ("b", "a", "c")]
        changes = [
            Change(Mode.MERGE, Counts(SessionStats(1), tools[i]), now, known, False, 1, w, 1)
            for i, (w, now) in enumerate(
                [("x", timestamp(1_764_000_003)), ("y", timestamp(1_764_000_001)),
                 ("z", timestamp(1_764_000_002))]
            )
        ]  # fmt: skip
        file = FileBackend(tmp_path / "session.json")
        backend = RedisBackend.from_url(redis_url)
        try:
            for change in changes:
                file.commit(change)
                backend.commit(change)
            assert direct.llen(DELTAS) == 2  # the first wrote the session: there was none
            assert backend.peek() == file.read()
            assert dict(backend.peek().session.tools) == {
                "b": ToolStats(1),
                "(other)": ToolStats(2),
            }
            assert backend.read() == file.read()  # folded: the list is empty, the value whole
            assert direct.llen(DELTAS) == 0
            assert stored(direct) == decode(_bytes(direct.get(SESSION))) == file.read()
        finally:
            backend.close()

    def test_deltas_over_a_deleted_session_agree_on_one_id(
        self, redis_url: str, direct: redis.Redis
    ) -> None:
        """After a delete, the first delta pushed decides the new session, for every store."""

        async def run() -> None:
            async with store_at(redis_url) as first, store_at(redis_url) as second:
                old = first.session_id
                deleter = RedisBackend.from_url(redis_url)
                assert await asyncio.to_thread(deleter.remove)
                await asyncio.to_thread(deleter.close)
                await first.increment_tool_calls()
                await first.flush()
                await second.increment_tool_calls(2)
                await second.flush()
                assert first.session_id == second.session_id != old
                assert direct.get(SESSION) is None  # in the deltas only, so far
                assert stored(direct).session.session_id == first.session_id
                assert stored(direct).session.stats.tool_calls == 3

        asyncio.run(run())

    def test_a_merge_never_conflicts(self, redis_url: str, direct: redis.Redis) -> None:
        """A merge is one round trip whatever others wrote since: no revision is bumped."""
        known = Record(Session.new(timestamp(1_764_000_000)))
        backends = [RedisBackend.from_url(redis_url) for _ in range(3)]
        try:
            for number in range(1, 4):
                for index, backend in enumerate(backends):
                    backend.commit(one_call(f"w{index}", number, known, saved=False))
            rev = direct.get(REV)
            backends[0].commit(one_call("w0", 4, known, saved=False))
            assert direct.get(REV) == rev
            assert direct.llen(DELTAS) == 9  # the first write made the session
            assert backends[0].read().session.stats.tool_calls == 10
        finally:
            for backend in backends:
                backend.close()

    def test_a_stores_view_is_its_last_read_and_its_own_merges(
        self, redis_url: str, direct: redis.Redis, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A merge's reply carries nothing of the others: a store sees the session as it last
        read it plus its own merges, each once, until its push makes the list a multiple of
        COMPACT_EVERY; then it folds, and sees exactly what it stored."""
        monkeypatch.setattr(_redis, "COMPACT_EVERY", 4)

        def own(store: AsyncSessionStore) -> Record:
            record = store._writer.record
            assert record is not None
            return record

        async def run() -> None:
            async with store_at(redis_url) as first, store_at(redis_url) as second:
                assert direct.llen(DELTAS) == 1  # the first wrote the session; the second pushed
                await second.increment_tool_calls(2)
                await second.flush()
                await first.increment_tool_calls(5)
                await first.flush()
                assert direct.llen(DELTAS) == 3
                assert own(first).session.stats.tool_calls == 5
                assert own(second).session.stats.tool_calls == 2
                await first.increment_tool_calls(7)
                await first.flush()  # the fourth delta: the first folds
                assert direct.llen(DELTAS) == 0
                assert encode(own(first)) == direct.get(SESSION)
                assert own(first).session.stats.tool_calls == 14
                for number in range(3):
                    await second.increment_tool_calls(10)
                    await second.flush()
                    calls = 2 + 10 * (number + 1)  # still its own only
                    assert own(second).session.stats.tool_calls == calls
                await second.increment_tool_calls(100)
                await second.flush()  # the fourth since the fold: the second folds
                assert direct.llen(DELTAS) == 0
                # Its earlier deltas are in the fold once, and not added again.
                assert encode(own(second)) == direct.get(SESSION)
                assert own(second).session.stats.tool_calls == 14 + 30 + 100

        asyncio.run(run())

    @pytest.mark.parametrize("every", [2, COMPACT_EVERY])
    def test_compaction_exactly_once_under_concurrent_compactors(
        self, redis_url: str, direct: redis.Redis, monkeypatch: pytest.MonkeyPatch, every: int
    ) -> None:
        """Writers push while several backends fold at once, as often as they can: every
        delta is folded exactly once."""
        monkeypatch.setattr(_redis, "COMPACT_EVERY", every)
        known = Record(Session.new(timestamp(1_764_000_000)))
        writers, merges = 4, 150
        done = threading.Event()
        errors: list[BaseException] = []
        folds = [0]

        def write(index: int) -> None:
            backend = RedisBackend.from_url(redis_url)
            try:
                for number in range(1, merges + 1):
                    backend.commit(one_call(f"w{index}", number, known, saved=False))
            except BaseException as exc:
                errors.append(exc)
            finally:
                backend.close()

        def fold_all() -> None:
            backend = RedisBackend.from_url(redis_url)
            try:
                while not done.is_set():
                    backend.read()
                    folds[0] += 1
            except BaseException as exc:
                errors.append(exc)
            finally:
                backend.close()

        opener = RedisBackend.from_url(redis_url)
        opener.commit(one_call("opener", 1, known, saved=False))
        opener.close()
        compactors = [threading.Thread(target=fold_all) for _ in range(3)]
        pushers = [threading.Thread(target=write, args=(index,)) for index in range(writers)]
        for thread in compactors + pushers:
            thread.start()
        for thread in pushers:
            thread.join(120)
        done.set()
        for thread in compactors:
            thread.join(120)
        assert errors == []
        assert folds[0] > 10
        assert stored(direct).session.stats.tool_calls == writers * merges + 1
        backend = RedisBackend.from_url(redis_url)
        try:
            assert backend.read().session.stats.tool_calls == writers * merges + 1
        finally:
            backend.close()
        assert direct.llen(DELTAS) == 0

    async def test_a_lost_reply_on_a_merge_pushes_the_delta_once(
        self, loser: ReplyLoser, direct: redis.Redis
    ) -> None:
        """The merge's reply is lost after the push; sent again, it pushes nothing."""
        async with store_at(loser.url) as store:
            await store.increment_tool_calls(2)
            await store.flush()
            before = direct.llen(DELTAS)
            await store.increment_tool_calls(5)
            loser.lose_next_reply()
            with pytest.raises(SessionStoreError):
                await store.flush()
            assert direct.llen(DELTAS) == before + 1
            await store.flush()  # sent again: applied already
            assert direct.llen(DELTAS) == before + 1
            assert store.session.stats.tool_calls == 7
            assert stored(direct).session.stats.tool_calls == 7
        assert stored(direct).session.stats.tool_calls == 7
        assert loser.lost == 1

    def test_a_lost_reply_on_a_compaction(self, loser: ReplyLoser, direct: redis.Redis) -> None:
        """A fold whose reply is lost landed once: the list is trimmed of what it folded, and
        the next writes build on the new revision."""
        known = Record(Session.new(timestamp(1_764_000_000)))
        backend = RedisBackend.from_url(loser.url)
        try:
            for number in range(1, 3):
                backend.commit(one_call("w", number, known, saved=False))
            backend.read()  # every script loaded: one reply per call from here on
            for number in range(3, 6):
                backend.commit(one_call("w", number, known, saved=False))
            assert direct.llen(DELTAS) == 3
            rev = direct.get(REV)
            loser.lose_reply_after(1)  # the read's reply arrives; the fold's is lost
            with pytest.raises(SessionStoreError):
                backend.read()
            assert loser.lost == 1
            assert direct.llen(DELTAS) == 0
            assert direct.get(REV) != rev
            assert decode(_bytes(direct.get(SESSION))).session.stats.tool_calls == 5
            record = backend.commit(one_call("w", 6, known, saved=False))
            assert record.session.stats.tool_calls == 6
            assert backend.read().session.stats.tool_calls == 6
        finally:
            backend.close()

    async def test_a_corrupt_delta_is_moved_aside(
        self,
        redis_url: str,
        direct: redis.Redis,
        caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A list entry that is no delta: peek leaves it; a flush that folds moves the list
        aside as it was and pushes the sound entries back, so their counts stay."""
        monkeypatch.setattr(_redis, "COMPACT_EVERY", 1)  # every flush folds
        async with store_at(redis_url) as store:
            await store.increment_tool_calls(2)
            await store.flush()
            direct.rpush(DELTAS, b"{oops")
            reader = RedisBackend.from_url(redis_url)
            with pytest.raises(CorruptSessionError, match="left in place"):
                await asyncio.to_thread(reader.peek)
            await asyncio.to_thread(reader.close)
            assert direct.lrange(DELTAS, -1, -1) == [b"{oops"]
            await store.increment_tool_calls(3)
            await store.flush()  # the fold reads the bad entry, and ours
        assert "corrupt list of changes" in caplog.text
        [aside] = [_bytes(key) for key in direct.keys(f"{DELTAS}:corrupt-*")]
        entries = direct.lrange(aside, 0, -1)
        assert b"{oops" in entries
        assert b"{oops" not in direct.lrange(DELTAS, 0, -1)
        assert stored(direct).session.stats.tool_calls == 5

    async def test_deltas_of_the_wrong_type_are_moved_aside(
        self, redis_url: str, direct: redis.Redis
    ) -> None:
        """A :deltas that is no list is renamed, never overwritten."""
        async with store_at(redis_url) as store:
            await store.increment_tool_calls()
            await store.flush()
            folder = RedisBackend.from_url(redis_url)
            await asyncio.to_thread(folder.read)  # folds the list in: it is gone
            await asyncio.to_thread(folder.close)
            direct.hset(DELTAS, "a", "b")
            await store.increment_tool_calls()
        [aside] = [_bytes(key) for key in direct.keys(f"{DELTAS}:corrupt-*")]
        assert direct.hgetall(aside) == {b"a": b"b"}
        assert stored(direct).session.stats.tool_calls == 2

    @pytest.mark.parametrize("version", [2, 10, 19, 100])
    def test_a_newer_value_met_by_a_merge_is_left_alone(
        self, redis_url: str, direct: redis.Redis, version: int
    ) -> None:
        """A newer release's session, written since the writer last read (its version may
        begin with the digit 1): the merge pushes nothing, raises, and leaves the value as
        it is."""
        known = Record(Session.new(timestamp(1_764_000_000)))
        backend = RedisBackend.from_url(redis_url)
        try:
            backend.commit(one_call("w", 1, known, saved=False))
            backend.commit(one_call("w", 2, known, saved=False))
            document = json.loads(_bytes(direct.get(SESSION)))
            document["version"] = version  # in encode's layout otherwise
            newer = json.dumps(document, indent=2).encode()
            direct.set(SESSION, newer)
            direct.incr(REV)
            before = direct.lrange(DELTAS, 0, -1)
            with pytest.raises(UnsupportedVersionError):
                backend.commit(one_call("w", 3, known, saved=False))
            assert direct.lrange(DELTAS, 0, -1) == before
            assert direct.get(SESSION) == newer
        finally:
            backend.close()

    def test_a_newer_value_is_not_deleted(self, redis_url: str, direct: redis.Redis) -> None:
        """delete() over a newer release's session raises, and leaves every key as it is."""
        known = Record(Session.new(timestamp(1_764_000_000)))
        backend = RedisBackend.from_url(redis_url)
        try:
            backend.commit(one_call("w", 1, known, saved=False))
            document = json.loads(_bytes(direct.get(SESSION)))
            document["version"] = 2
            direct.set(SESSION, json.dumps(document, indent=2).encode())
            direct.incr(REV)
            before = {key: direct.dump(key) for key in direct.keys("*")}
            with pytest.raises(UnsupportedVersionError):
                backend.remove()
            assert {key: direct.dump(key) for key in direct.keys("*")} == before
        finally:
            backend.close()

    def test_a_corrupt_value_is_moved_aside_not_deleted(
        self, redis_url: str, direct: redis.Redis
    ) -> None:
        """delete() over a corrupt session moves it to a key of its own, as a flush would."""
        backend = RedisBackend.from_url(redis_url)
        try:
            direct.set(SESSION, b"{oops")
            assert backend.remove() is True
            [aside] = [_bytes(key) for key in direct.keys(f"{SESSION}:corrupt-*")]
            assert direct.get(aside) == b"{oops"
            assert direct.get(SESSION) is None
        finally:
            backend.close()

    def test_the_merge_script_expects_the_head_encode_writes(self) -> None:
        """The bytes a merge takes for a judged version 1 are how encode begins one, and
        no other version begins so."""
        assert encode(FRESH).startswith(VERSION_1_HEAD.encode())
        for version in (10, 11, 100):
            document = json.loads(encode(FRESH))
            document["version"] = version
            assert not json.dumps(document, indent=2).startswith(VERSION_1_HEAD)

    def test_a_newer_entry_in_the_list_is_kept_and_never_folded(
        self, redis_url: str, direct: redis.Redis
    ) -> None:
        """An entry of a newer release in the list: a merge that reads nothing appends after
        it, every read raises and folds nothing, and a corrupt entry beside it moves the
        list aside with the newer entry put back, not dropped."""
        reader, pusher = RedisBackend.from_url(redis_url), RedisBackend.from_url(redis_url)
        try:
            seen = reader.commit(one_call("r", 1, FRESH, saved=False))  # writes the session
            pusher.commit(one_call("p", 1, seen))
            value = direct.get(SESSION)
            made = make_delta(one_call("x", 1, seen, calls=100), "here")
            assert made is not None
            newer = made[0].replace(b'"version": 1,', b'"version": 2,', 1)
            direct.rpush(DELTAS, b"{oops", newer)
            pusher.commit(one_call("p", 2, seen))  # held its view: pushes, reads nothing
            first, _, _, last = direct.lrange(DELTAS, 0, -1)
            with pytest.raises(UnsupportedVersionError, match="a change in its list"):
                reader.read()
            assert direct.lrange(DELTAS, 0, -1) == [first, newer, last]
            [aside] = [_bytes(key) for key in direct.keys(f"{DELTAS}:corrupt-*")]
            assert direct.lrange(aside, 0, -1) == [first, b"{oops", newer, last]
            with pytest.raises(UnsupportedVersionError):
                reader.read()
            assert direct.get(SESSION) == value
            assert direct.lrange(DELTAS, 0, -1) == [first, newer, last]
        finally:
            reader.close()
            pusher.close()

    def test_a_value_written_otherwise_is_judged_then_merged(
        self, redis_url: str, direct: redis.Redis
    ) -> None:
        """A valid session not in encode's layout (written by another tool) costs a round
        trip to judge it, then the merge is a delta as always."""
        known = Record(Session.new(timestamp(1_764_000_000)))
        backend = RedisBackend.from_url(redis_url)
        try:
            backend.commit(one_call("w", 1, known, saved=False))
            compact = json.dumps(json.loads(_bytes(direct.get(SESSION))), separators=(",", ":"))
            direct.set(SESSION, compact.encode())
            direct.incr(REV)
            assert backend.commit(one_call("w", 2, known, saved=False)).session.stats == (
                SessionStats(2)
            )
            assert direct.llen(DELTAS) == 1
            assert direct.get(SESSION) == compact.encode()
        finally:
            backend.close()


FRESH = Record(Session.new(timestamp(1_764_000_000)))


def calls_stored(client: redis.Redis) -> int:
    return stored(client).session.stats.tool_calls


class TestDeltaFaults:
    """Each way a delta could be folded twice or lost, against a real redis-server."""

    def test_a_corrupt_session_is_rebuilt_without_counting_a_delta_twice(
        self, redis_url: str, direct: redis.Redis, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A value spoiled after another store folded is rebuilt from the value this store
        last read plus the list: its own delta, in its view and still in the list, counts
        once (the other's, folded into the spoiled value since, is lost with it)."""
        writer, folder = RedisBackend.from_url(redis_url), RedisBackend.from_url(redis_url)
        try:
            seen = writer.commit(one_call("a", 1, FRESH, saved=False))  # writes the session
            other = make_delta(one_call("x", 1, FRESH, calls=100), "here")
            assert other is not None
            direct.rpush(DELTAS, other[0])  # pushed, and counted, as a merge does
            direct.set(f"{BASE}:pushed", b"1764000000000001")
            pushed = before_script(
                monkeypatch,
                folder,
                "_rewrite_script",
                lambda: writer.commit(one_call("a", 2, seen, calls=10)),
            )
            assert folder.read().session.stats.tool_calls == 101  # read before our push
            [adopted] = pushed
            assert isinstance(adopted, Record)
            assert adopted.session.stats.tool_calls == 11  # what it read, and its own
            assert direct.llen(DELTAS) == 1  # ours: the fold trimmed only what it read
            direct.set(SESSION, b"{oops")  # spoiled by hand: the revision stays
            record = writer.commit(one_call("a", 3, adopted, calls=1000))
            assert record == stored(direct)
            assert calls_stored(direct) == 1 + 10 + 1000
            assert [direct.get(key) for key in aside_keys(direct)] == [b"{oops"]
        finally:
            writer.close()
            folder.close()

    @pytest.mark.parametrize(
        "sizes", [[MAX_FILE_SIZE + 1], [1 << 20] * 17], ids=["one-entry", "all-entries"]
    )
    async def test_an_oversized_list_is_moved_aside_unread(
        self, redis_url: str, direct: redis.Redis, sizes: list[int]
    ) -> None:
        """A list of deltas past the size bound, in one entry or in them all, is never sent:
        peek leaves it, a flush renames it to a key of its own unread and pushes its delta."""
        async with store_at(redis_url) as store:
            await store.increment_tool_calls(2)
            await store.flush()
            reader = RedisBackend.from_url(redis_url)
            await asyncio.to_thread(reader.read)  # folded: the list is empty
            for size in sizes:
                direct.rpush(DELTAS, b"x" * size)
            sent = direct.info("stats")["total_net_output_bytes"]
            with pytest.raises(CorruptSessionError, match=r"larger than .* left in place"):
                await asyncio.to_thread(reader.peek)
            await asyncio.to_thread(reader.close)
            assert direct.llen(DELTAS) == len(sizes)
            await store.increment_tool_calls(3)
            await store.flush()
            assert store.session.stats.tool_calls == calls_stored(direct) == 5
            assert direct.info("stats")["total_net_output_bytes"] - sent < 1 << 20
        [aside] = [_bytes(key) for key in direct.keys(f"{DELTAS}:corrupt-*")]
        assert direct.lrange(aside, 0, -1) == [b"x" * size for size in sizes]
        assert calls_stored(direct) == 5

    def test_a_list_too_full_for_a_delta_is_folded_with_it(
        self, redis_url: str, direct: redis.Redis, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A push that would take the list past the bound is a compare-and-set instead, of
        the list folded and the change: the list never passes it, and nothing is lost."""
        monkeypatch.setattr(_redis, "MAX_FILE_SIZE", 8192)
        monkeypatch.setattr(_redis, "COMPACT_EVERY", 10_000)
        backend = RedisBackend.from_url(redis_url)
        lengths = []
        try:
            for number in range(1, 101):
                backend.commit(one_call("w", number, FRESH, saved=False))
                lengths.append(direct.llen(DELTAS))
                assert (direct.memory_usage(DELTAS, samples=0) or 0) <= 8192
        finally:
            backend.close()
        assert lengths.count(0) >= 3  # the first write, and each push that found no room
        assert calls_stored(direct) == 100
        assert direct.keys(f"{DELTAS}:corrupt-*") == []

    @pytest.mark.parametrize("when", ["before-the-read", "between-read-and-fold"])
    @pytest.mark.parametrize("count_too", [False, True], ids=["list", "list-and-count"])
    def test_a_list_deleted_by_hand_is_read_afresh(
        self,
        redis_url: str,
        direct: redis.Redis,
        monkeypatch: pytest.MonkeyPatch,
        when: str,
        count_too: bool,
    ) -> None:
        """A :deltas deleted by hand (no revision bumped; with its count of pushes, or not)
        and pushed to again, before a store's read or between its read and its fold: the
        store that held the old list
        reads the new one whole, so the deleted entries do not come back and none of the
        new ones is trimmed unfolded."""
        pusher, holder, other = (RedisBackend.from_url(redis_url) for _ in range(3))
        try:
            seen = pusher.commit(one_call("p", 1, FRESH, saved=False))  # writes the session
            for number in range(2, 5):
                pusher.commit(one_call("p", number, seen, calls=100))
            holder.commit(one_call("h", 1, seen, calls=1000))  # reads the 3, pushes its own
            assert direct.llen(DELTAS) == 4

            def delete_and_push() -> None:
                direct.delete(DELTAS)  # by hand: the 300 and the holder's 1,000 are gone
                if count_too:  # and its count of pushes with it
                    direct.delete(f"{BASE}:pushed")
                for number in range(1, 6):
                    other.commit(one_call("o", number, seen))

            if when == "before-the-read":
                delete_and_push()
            else:
                done = before_script(monkeypatch, holder, "_rewrite_script", delete_and_push)
            assert holder.read().session.stats.tool_calls == 1 + 5
            assert calls_stored(direct) == 1 + 5
            assert direct.llen(DELTAS) == 0
            if when != "before-the-read":
                assert done == [None]
        finally:
            for backend in (pusher, holder, other):
                backend.close()

    def test_a_push_while_a_corrupt_list_is_moved_aside_is_kept(
        self,
        redis_url: str,
        direct: redis.Redis,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A delta pushed after a store read a corrupt list to move it aside, before it
        moved it: it is put back after the sound entries, once, and the warning says so."""
        mover, pusher = RedisBackend.from_url(redis_url), RedisBackend.from_url(redis_url)
        try:
            seen = mover.commit(one_call("m", 1, FRESH, saved=False))  # writes the session
            pusher.commit(one_call("p", 1, seen, calls=10))
            direct.rpush(DELTAS, b"{oops")
            done = before_script(
                monkeypatch,
                mover,
                "_deltas_aside_script",
                lambda: pusher.commit(one_call("p", 2, seen, calls=100)),
            )
            assert mover.read().session.stats.tool_calls == 1 + 10 + 100
            assert len(done) == 1
            assert calls_stored(direct) == 1 + 10 + 100
            [aside] = [_bytes(key) for key in direct.keys(f"{DELTAS}:corrupt-*")]
            _, bad, last = direct.lrange(aside, 0, -1)
            assert bad == b"{oops"
            assert read_delta(_bytes(last)).change.counts.stats.tool_calls == 100
            assert "put back the 1 that were sound, and the 1 pushed since" in caplog.text
        finally:
            mover.close()
            pusher.close()

    def test_a_push_between_a_folds_read_and_write_is_kept(
        self, redis_url: str, direct: redis.Redis, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A delta pushed after a fold read the list, before it wrote, stays in the list and
        the next fold counts it once."""
        writer, folder = RedisBackend.from_url(redis_url), RedisBackend.from_url(redis_url)
        try:
            seen = writer.commit(one_call("w", 1, FRESH, saved=False))
            writer.commit(one_call("w", 2, seen))
            before_script(
                monkeypatch,
                folder,
                "_rewrite_script",
                lambda: writer.commit(one_call("w", 3, seen)),
            )
            assert folder.read().session.stats.tool_calls == 2
            assert direct.llen(DELTAS) == 1
            assert calls_stored(direct) == 3
            assert folder.read().session.stats.tool_calls == 3
            assert direct.llen(DELTAS) == 0
        finally:
            writer.close()
            folder.close()

    def test_a_lost_reply_on_the_fold_after_a_push(
        self, loser: ReplyLoser, direct: redis.Redis, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The push whose reply asks its writer to fold lands, and the fold's reply is
        lost: the flush still succeeds, its view counts its delta once, totals stay exact."""
        monkeypatch.setattr(_redis, "COMPACT_EVERY", 2)
        backend = RedisBackend.from_url(loser.url)
        try:
            seen = backend.commit(one_call("w", 1, FRESH, saved=False))  # loads every script
            backend.commit(one_call("w", 2, seen))
            loser.lose_reply_after(1)  # the push's reply arrives; the fold's is lost
            record = backend.commit(one_call("w", 3, seen))
            assert loser.lost == 1
            assert record.session.stats.tool_calls == 3
            assert direct.llen(DELTAS) == 0  # the fold landed
            assert decode(_bytes(direct.get(SESSION))).session.stats.tool_calls == 3
            record = backend.commit(one_call("w", 4, record))
            assert record.session.stats.tool_calls == calls_stored(direct) == 4
            assert backend.read().session.stats.tool_calls == 4
        finally:
            backend.close()

    def test_a_delete_between_a_push_and_its_fold(
        self, redis_url: str, direct: redis.Redis, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Another store deletes the session after a push that asks its writer to fold, before
        the fold: the flush returns the session as its push left it, the delete stands, and
        the next flush starts a new session, counting only what came after."""
        monkeypatch.setattr(_redis, "COMPACT_EVERY", 2)
        writer, deleter = RedisBackend.from_url(redis_url), RedisBackend.from_url(redis_url)
        try:
            seen = writer.commit(one_call("w", 1, FRESH, saved=False))
            writer.commit(one_call("w", 2, seen))
            done = before_script(monkeypatch, writer, "_rewrite_script", deleter.remove)
            record = writer.commit(one_call("w", 3, seen))
            assert done == [True]
            assert record.session.stats.tool_calls == 3
            assert redis_stored(direct) is None
            after = writer.commit(one_call("w", 4, record))
            assert after.session.session_id != seen.session.session_id
            assert after == stored(direct)
            assert calls_stored(direct) == 1
        finally:
            writer.close()
            deleter.close()

    def test_a_delete_while_a_corrupt_value_is_replaced(
        self, redis_url: str, direct: redis.Redis, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A value spoiled by hand past the head the merge checks, then deleted by another
        store between the push that finds it and the write that moves it aside: the flush
        returns what its writer knew with its change, and the delete stands."""
        writer, deleter = RedisBackend.from_url(redis_url), RedisBackend.from_url(redis_url)
        try:
            seen = writer.commit(one_call("w", 1, FRESH, saved=False))
            direct.set(SESSION, VERSION_1_HEAD.encode() + b"  garbage")
            done = before_script(monkeypatch, writer, "_rewrite_script", deleter.remove)
            record = writer.commit(one_call("w", 2, seen, calls=10))
            assert done == [True]
            assert record == one_call("w", 2, seen, calls=10).apply(seen)
            assert redis_stored(direct) is None
        finally:
            writer.close()
            deleter.close()

    def test_a_merge_that_times_out_is_applied_once(
        self, loser: ReplyLoser, direct: redis.Redis
    ) -> None:
        """A merge whose reply comes after the backend's timeout (its call cancelled, the
        push landed) is applied once when sent again, and the view counts it once."""
        backend = RedisBackend.from_url(loser.url)
        try:
            seen = backend.commit(one_call("w", 1, FRESH, saved=False))
            seen = backend.commit(one_call("w", 2, seen))
            change = one_call("w", 3, seen, calls=10)
            loser.hold()
            backend.timeout = 0.5  # for this call only: the reply is held until after it
            with pytest.raises(SessionStoreError, match="no answer"):
                backend.commit(change)
            backend.timeout = 10.0
            assert loser.request_seen.is_set()
            loser.release()
            assert direct.llen(DELTAS) == 2
            record = backend.commit(change)  # sent again, as the writer does
            assert direct.llen(DELTAS) == 2
            assert record.session.stats.tool_calls == calls_stored(direct) == 12
        finally:
            backend.close()

    async def test_a_reset_with_deltas_pending(
        self, redis_url: str, direct: redis.Redis, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A reset zeroes the deltas pushed before it read; one pushed between its read and
        its write comes after it; another store sees the reset at its next flush."""
        loop = asyncio.get_running_loop()
        async with store_at(redis_url) as first, store_at(redis_url) as second:
            await second.increment_tool_calls(5)
            await second.flush()
            await first.increment_tool_calls(3)
            await first.flush()
            await second.increment_tool_calls(7)
            before_script(
                monkeypatch,
                first._writer.backend,
                "_rewrite_script",
                lambda: asyncio.run_coroutine_threadsafe(second.flush(), loop).result(),
            )
            await first.reset_stats()
            assert first.session.stats.tool_calls == 0
            assert calls_stored(direct) == 7
            await second.increment_tool_calls()
            await second.flush()
            assert second.session.stats.tool_calls == calls_stored(direct) == 8
            assert second.session_id == first.session_id
        assert calls_stored(direct) == 8

    async def test_a_new_session_with_deltas_pending(
        self, redis_url: str, direct: redis.Redis
    ) -> None:
        """A new session drops the deltas pushed before it; another store's next flush
        counts into the new one, and sees it."""
        async with store_at(redis_url) as first, store_at(redis_url) as second:
            old = first.session_id
            await second.increment_tool_calls(5)
            await second.flush()
            await first.new_session()
            assert calls_stored(direct) == 0
            await second.increment_tool_calls(2)
            await second.flush()
            assert second.session_id == first.session_id != old
            assert second.session.stats.tool_calls == calls_stored(direct) == 2
        assert stored(direct).session.session_id != old

    async def test_a_deleted_session_never_comes_back(
        self, loser: ReplyLoser, direct: redis.Redis
    ) -> None:
        """After a delete, a store that has not seen it pushes into a new session, and a
        change of its sent again after a lost reply is not pushed again: the deleted id and
        its counts are never stored again."""
        async with store_at(loser.url) as stale, store_at(loser.url) as other:
            old = stale.session_id
            await stale.increment_tool_calls(2)
            await stale.flush()
            await stale.increment_tool_calls(3)
            loser.lose_next_reply()
            with pytest.raises(SessionStoreError):
                await stale.flush()  # pushed; the reply lost
            deleter = RedisBackend.from_url(loser.url)
            assert await asyncio.to_thread(deleter.remove)
            await asyncio.to_thread(deleter.close)
            await stale.flush()  # sent again: applied already, so nothing is pushed
            assert direct.get(SESSION) is None
            assert direct.llen(DELTAS) == 0
            await other.increment_tool_calls(7)
            await other.flush()  # a push onto no session: a new one, read back at once
            new = other.session_id
            assert new != old
            assert stored(direct).session.session_id == new
            await stale.increment_tool_calls(11)
            await stale.flush()
            assert stored(direct).session.session_id == stale.session_id == new
            assert calls_stored(direct) == 18
        assert stored(direct).session.session_id == new
        assert calls_stored(direct) == 18

    def test_the_bound_without_the_memory_command(
        self, tmp_path: Path, redis_server: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """On a server without MEMORY (renamed away; an ACL may deny it too) the scripts add
        the entries' lengths up instead: a full list is folded, an oversized one moved aside
        unread."""
        server = RedisServer(tmp_path, extra=("--rename-command", "MEMORY", '""')).start()
        direct = redis.Redis.from_url(server.url)
        backend = RedisBackend.from_url(server.url)
        try:
            with pytest.raises(redis.ResponseError, match="unknown command"):
                direct.execute_command("MEMORY", "USAGE", DELTAS)  # type: ignore[no-untyped-call]
            with monkeypatch.context() as bounded:
                bounded.setattr(_redis, "MAX_FILE_SIZE", 8192)
                bounded.setattr(_redis, "COMPACT_EVERY", 10_000)
                for number in range(1, 61):
                    backend.commit(one_call("w", number, FRESH, saved=False))
                    assert sum(map(len, direct.lrange(DELTAS, 0, -1))) <= 8192 // 2
            assert calls_stored(direct) == 60
            assert backend.read().session.stats.tool_calls == 60  # folded: the list is empty
            direct.rpush(DELTAS, *[b"x" * (1 << 20)] * 17)
            sent = direct.info("stats")["total_net_output_bytes"]
            assert backend.read().session.stats.tool_calls == 60
            assert direct.info("stats")["total_net_output_bytes"] - sent < 1 << 20
            [aside] = [_bytes(key) for key in direct.keys(f"{DELTAS}:corrupt-*")]
            assert direct.llen(aside) == 17
        finally:
            backend.close()
            direct.close()
            server.stop()
