"""AsyncSessionStore: the behaviour of one store, in one process, on real files."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiofiles.os
import anyio
import filelock
import pytest

from aiosessionstore import (
    AsyncSessionStore,
    ClientStats,
    LockTimeoutError,
    SessionStats,
    SessionStoreError,
    StoreClosedError,
    UnsupportedVersionError,
)

from .conftest import (
    FakeClock,
    Interposed,
    read_on_disk,
)

pytestmark = pytest.mark.anyio


async def write_text(path: Path, text: str) -> None:
    async with aiofiles.open(path, "w", encoding="utf-8") as file:
        await file.write(text)


COUNTERS = ("tool_calls", "prompt_calls", "errors", "rate_limits")


class TestOpen:
    async def test_creates_a_session_file_at_once(self, session_path: Path) -> None:
        """Entering the store writes a new session before the first update."""
        async with AsyncSessionStore(session_path) as store:
            on_disk = await read_on_disk(session_path)
            assert on_disk["sessionId"] == store.session_id
            assert on_disk["stats"] == {
                "toolCalls": 0,
                "promptCalls": 0,
                "errors": 0,
                "rateLimits": 0,
            }

    async def test_reopening_keeps_the_session_id(self, session_path: Path) -> None:
        """Two opens of one file see the same session, as the seed's getOrCreateSession."""
        async with AsyncSessionStore(session_path) as first:
            pass
        async with AsyncSessionStore(session_path) as second:
            assert second.session_id == first.session_id

    async def test_reopening_updates_last_active(
        self, session_path: Path, clock: FakeClock
    ) -> None:
        """Opening marks the session active now and keeps when it was created."""
        async with AsyncSessionStore(session_path, clock=clock) as first:
            created = first.session.created_at
        clock.advance(3600)
        async with AsyncSessionStore(session_path, clock=clock) as second:
            assert second.session.created_at == created
            assert second.session.last_active_at == datetime.fromtimestamp(clock.now, timezone.utc)

    async def test_force_new_starts_a_new_session(self, session_path: Path) -> None:
        """force_new=True replaces the session id and its counts."""
        async with AsyncSessionStore(session_path) as first:
            await first.increment_tool_calls(5)
        async with AsyncSessionStore(session_path, force_new=True) as second:
            assert second.session_id != first.session_id
            assert second.session.stats == SessionStats()
        assert (await read_on_disk(session_path))["sessionId"] == second.session_id

    async def test_directory_is_created_private(self, tmp_path: Path) -> None:
        """A missing directory is created 0700 and the file 0600."""
        path = tmp_path / "a" / "b" / "session.json"
        async with AsyncSessionStore(path):
            pass
        assert path.parent.stat().st_mode & 0o777 == 0o700
        assert path.stat().st_mode & 0o777 == 0o600

    async def test_a_path_that_is_a_directory_fails_at_open(self, session_path: Path) -> None:
        """A directory where the file should be is an error at open that names the path."""
        await anyio.Path(session_path).mkdir(parents=True)
        with pytest.raises(SessionStoreError, match=str(session_path)):
            async with AsyncSessionStore(session_path):
                pass

    async def test_an_unwritable_directory_fails_at_open(self, tmp_path: Path) -> None:
        """A directory that cannot be created is an error at open, with the OS's reason."""
        blocker = tmp_path / "file"
        await write_text(blocker, "not a directory")
        with pytest.raises(SessionStoreError, match=f"File exists: {blocker}") as caught:
            async with AsyncSessionStore(blocker / "session.json"):
                pass
        assert isinstance(caught.value.__cause__, OSError)

    async def test_a_store_opens_only_once(self, session_path: Path) -> None:
        """A closed store is not reopened by accident: make a new one."""
        store = AsyncSessionStore(session_path)
        async with store:
            pass
        with pytest.raises(RuntimeError, match="only once"):
            async with store:
                pass


class TestCounters:
    async def test_increments_add_up(self, session_path: Path) -> None:
        """Each counter adds what it is given, and the session shows it before any flush."""
        async with AsyncSessionStore(session_path) as store:
            await store.increment_tool_calls()
            await store.increment_tool_calls(2)
            await store.increment_prompt_calls(3)
            await store.increment_errors(4)
            await store.increment_rate_limits(5)
            await store.update_stats(tool_calls=10, errors=1)
            assert store.session.stats == SessionStats(13, 3, 5, 5)
        assert (await read_on_disk(session_path))["stats"] == {
            "toolCalls": 13,
            "promptCalls": 3,
            "errors": 5,
            "rateLimits": 5,
        }

    async def test_counting_marks_the_session_active(
        self, session_path: Path, clock: FakeClock
    ) -> None:
        """Every update moves lastActiveAt to the injected clock's now."""
        async with AsyncSessionStore(session_path, clock=clock) as store:
            clock.advance(90.5)
            await store.increment_errors()
            assert store.session.last_active_at.timestamp() == clock.now
        assert (await read_on_disk(session_path))["lastActiveAt"] == "2025-11-24T16:01:30.500Z"

    async def test_concurrent_tasks_lose_nothing(self, session_path: Path) -> None:
        """A thousand tasks counting at once, while flushes run, add up exactly."""
        async with AsyncSessionStore(session_path) as store, anyio.create_task_group() as tasks:
            for _ in range(1000):
                tasks.start_soon(store.increment_tool_calls)
            tasks.start_soon(store.flush)
            tasks.start_soon(store.flush)
        assert (await read_on_disk(session_path))["stats"]["toolCalls"] == 1000

    @pytest.mark.parametrize(
        ("count", "error", "message"),
        [
            (1.0, TypeError, "count must be an int"),
            ("1", TypeError, "count must be an int"),
            (None, TypeError, "count must be an int"),
            (True, TypeError, "count must be an int"),  # a bool is no count
            (-1, ValueError, "must not be negative"),  # counters only grow: see reset_stats()
        ],
    )
    async def test_a_bad_count_is_refused_and_nothing_counted(
        self, session_path: Path, count: Any, error: type[Exception], message: str
    ) -> None:
        """Every counter refuses a count that is not a non-negative int, and counts nothing."""
        async with AsyncSessionStore(session_path) as store:
            for name in COUNTERS:
                with pytest.raises(error, match=message):
                    await getattr(store, f"increment_{name}")(count)
                with pytest.raises(error, match=message):
                    await store.update_stats(**{name: count})
            assert store.session.stats == SessionStats()


class TestHeldLock:
    """The store never holds its lock across an await; these tests hold it by hand, to show
    that an update made meanwhile waits for it and is counted exactly once, or not at all."""

    async def test_increments_wait_for_a_held_lock_and_count_once(self, session_path: Path) -> None:
        """Increments made while the lock is held count nothing until it is released."""
        async with AsyncSessionStore(session_path) as store:
            await store._lock.acquire()
            waiting = [
                asyncio.ensure_future(getattr(store, f"increment_{name}")(2))
                for name in COUNTERS
                for _ in range(50)
            ]
            await anyio.wait_all_tasks_blocked()
            assert store.session.stats == SessionStats()
            store._lock.release()
            await asyncio.gather(*waiting)
            assert store.session.stats == SessionStats(100, 100, 100, 100)
        assert (await read_on_disk(session_path))["stats"]["rateLimits"] == 100

    async def test_a_cancelled_wait_for_the_lock_counts_nothing(self, session_path: Path) -> None:
        """Increments cancelled while they wait for the lock count nothing, then or later."""
        async with AsyncSessionStore(session_path) as store:
            await store._lock.acquire()
            waiting = [
                asyncio.ensure_future(getattr(store, f"increment_{name}")()) for name in COUNTERS
            ]
            await anyio.wait_all_tasks_blocked()
            for task in waiting:
                task.cancel()
            store._lock.release()
            for task in waiting:
                with pytest.raises(asyncio.CancelledError):
                    await task
            await store.increment_tool_calls()
            assert store.session.stats == SessionStats(tool_calls=1)
        assert (await read_on_disk(session_path))["stats"] == {
            "toolCalls": 1,
            "promptCalls": 0,
            "errors": 0,
            "rateLimits": 0,
        }

    async def test_a_waiter_cancelled_as_it_is_woken_passes_the_lock_on(
        self, session_path: Path
    ) -> None:
        """The first waiter, woken by the release and cancelled before it ran, counts nothing,
        and the one behind it still counts."""
        async with AsyncSessionStore(session_path) as store:
            await store._lock.acquire()
            first = asyncio.ensure_future(store.increment_errors())
            await anyio.wait_all_tasks_blocked()
            second = asyncio.ensure_future(store.increment_tool_calls())
            await anyio.wait_all_tasks_blocked()
            store._lock.release()  # wakes the first, which has not run yet
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            await second
            assert store.session.stats == SessionStats(tool_calls=1)
            assert not store._lock.locked()

    async def test_a_bad_count_waits_its_turn_and_is_refused(self, session_path: Path) -> None:
        """A bad count made while the lock is held raises once it is released; nothing counted."""
        async with AsyncSessionStore(session_path) as store:
            await store._lock.acquire()
            waiting = asyncio.ensure_future(store.increment_errors(-1))
            await anyio.wait_all_tasks_blocked()
            store._lock.release()
            with pytest.raises(ValueError, match="must not be negative"):
                await waiting
            assert store.session.stats == SessionStats()

    async def test_an_increment_waiting_as_the_store_closes_is_refused(
        self, session_path: Path
    ) -> None:
        """An increment still waiting for the lock when the store closes raises
        StoreClosedError and is not written."""
        store = AsyncSessionStore(session_path)
        await store.open()
        await store._lock.acquire()
        waiting = asyncio.ensure_future(store.increment_tool_calls())
        await anyio.wait_all_tasks_blocked()
        closing = asyncio.ensure_future(store.aclose())
        await anyio.wait_all_tasks_blocked()
        store._lock.release()
        with pytest.raises(StoreClosedError):
            await waiting
        await closing
        assert (await read_on_disk(session_path))["stats"]["toolCalls"] == 0

    async def test_a_tool_call_waits_for_a_held_lock_and_counts_once(
        self, session_path: Path
    ) -> None:
        """A call started while the lock is held is counted, per tool and client, once."""
        async with AsyncSessionStore(session_path) as store:

            async def call() -> None:
                async with store.tool_call("search", client="client"):
                    pass

            await store._lock.acquire()
            waiting = asyncio.ensure_future(call())
            await anyio.wait_all_tasks_blocked()
            assert store.session.stats == SessionStats()
            store._lock.release()
            await waiting
            session = store.session
            assert session.stats == SessionStats(tool_calls=1)
            assert session.tools["search"].calls == 1
            assert session.clients["client"] == ClientStats(1, 0)

    async def test_a_tool_call_cancelled_waiting_for_the_lock_counts_nothing(
        self, session_path: Path
    ) -> None:
        """A call cancelled while it waits for the lock to start counts nothing at all."""
        async with AsyncSessionStore(session_path) as store:

            @store.prompt_call("greet")
            async def greet() -> None:
                raise AssertionError("never started")  # pragma: no cover

            await store._lock.acquire()
            waiting = asyncio.ensure_future(greet())
            await anyio.wait_all_tasks_blocked()
            waiting.cancel()
            store._lock.release()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert store.session.stats == SessionStats()
            assert not store.session.prompts


BAD_READINGS = [float("nan"), float("inf"), -float("inf"), 1e20, -1.0]


class TestBadClock:
    @pytest.mark.parametrize("reading", BAD_READINGS)
    async def test_a_bad_reading_costs_no_count(
        self, session_path: Path, clock: FakeClock, reading: float
    ) -> None:
        """NaN, an infinity or a time past 9999 keeps lastActiveAt and writes every count."""
        async with AsyncSessionStore(session_path, clock=clock) as store:
            await store.increment_tool_calls(2)
            clock.now = reading
            await store.increment_errors(3)
            await store.flush()
            await store.increment_errors()
            assert store.session.stats == SessionStats(tool_calls=2, errors=4)
        on_disk = await read_on_disk(session_path)
        assert on_disk["stats"]["errors"] == 4
        assert on_disk["lastActiveAt"] == "2025-11-24T16:00:00.000Z"

    @pytest.mark.parametrize("reading", BAD_READINGS)
    async def test_a_bad_reading_at_open_is_logged_and_replaced(
        self, session_path: Path, reading: float, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A store opened with a broken clock still opens, with the system's time."""
        async with AsyncSessionStore(session_path, clock=lambda: reading) as store:
            await store.increment_tool_calls()
            assert store.session.created_at.year >= 2025
        assert "the clock returned" in caplog.text
        assert (await read_on_disk(session_path))["stats"]["toolCalls"] == 1


class RaisingClock(FakeClock):
    """A clock that raises while ``broken`` is set."""

    broken = False

    def __call__(self) -> float:
        if self.broken:
            raise RuntimeError("clock broke")
        return super().__call__()


class TestRaisingClock:
    async def test_an_increment_that_raised_counted_nothing(self, session_path: Path) -> None:
        """The clock is read before anything is added: a call that raised left no count."""
        clock = RaisingClock()
        async with AsyncSessionStore(session_path, clock=clock) as store:
            clock.broken = True
            with pytest.raises(RuntimeError, match="clock broke"):
                await store.increment_tool_calls()
            with pytest.raises(RuntimeError, match="clock broke"):
                await store.update_stats(errors=2)
            clock.broken = False
            await store.increment_tool_calls()
            assert store.session.stats == SessionStats(tool_calls=1)
        assert (await read_on_disk(session_path))["stats"]["toolCalls"] == 1

    async def test_a_call_ending_on_a_raising_clock_keeps_its_own_error(
        self, session_path: Path
    ) -> None:
        """The call's end is counted with the system's time; the tool's exception propagates."""
        clock = RaisingClock()
        async with AsyncSessionStore(session_path, clock=clock) as store:
            with pytest.raises(KeyError):
                async with store.tool_call("lookup"):
                    clock.broken = True
                    raise KeyError("missing")
            clock.broken = False
            assert store.session.stats == SessionStats(tool_calls=1, errors=1)


class TestClosed:
    async def test_calls_after_close_raise(self, session_path: Path) -> None:
        """After the block, updates, writes and the session view raise StoreClosedError."""
        async with AsyncSessionStore(session_path) as store:
            pass
        calls: list[Callable[[], Awaitable[object]]] = [
            store.increment_tool_calls, store.increment_prompt_calls, store.increment_errors,
            store.increment_rate_limits, store.update_stats, store.flush, store.reset_stats,
            store.new_session, store.delete,
        ]  # fmt: skip
        for call in calls:
            with pytest.raises(StoreClosedError, match="not open"):
                await call()
        with pytest.raises(StoreClosedError):
            _ = store.session

    async def test_session_id_is_readable_after_close(self, session_path: Path) -> None:
        """The id stays available for a final log line."""
        async with AsyncSessionStore(session_path) as store:
            session_id = store.session_id
        assert store.session_id == session_id

    async def test_session_id_needs_an_open(self, session_path: Path) -> None:
        """Before the first open there is no session to name."""
        with pytest.raises(StoreClosedError, match="never opened"):
            _ = AsyncSessionStore(session_path).session_id

    async def test_aclose_is_idempotent_and_flushes(self, session_path: Path) -> None:
        """aclose() inside the block flushes; calling it again, or leaving, does nothing more."""
        async with AsyncSessionStore(session_path) as store:
            await store.increment_tool_calls(7)
            await store.aclose()
            await store.aclose()
            assert (await read_on_disk(session_path))["stats"]["toolCalls"] == 7
        assert (await read_on_disk(session_path))["stats"]["toolCalls"] == 7

    async def test_closing_twice_at_once_waits_for_the_first(
        self, session_path: Path, interposed: Interposed
    ) -> None:
        """A second aclose() returns only once the first one's final flush is on disk."""
        started, release = threading.Event(), threading.Event()
        async with AsyncSessionStore(backend=interposed, close_timeout=60) as store:
            await store.increment_tool_calls(3)
            interposed.hold(started, release)
            first = asyncio.ensure_future(store.aclose())
            await anyio.to_thread.run_sync(started.wait)
            second = asyncio.ensure_future(store.aclose())
            await anyio.wait_all_tasks_blocked()
            assert not second.done()  # it waits on the first close, whose write is held
            release.set()
            await second
            assert (await read_on_disk(session_path))["stats"]["toolCalls"] == 3
            await first

    async def test_an_error_in_the_block_still_flushes(self, session_path: Path) -> None:
        """The body's exception propagates as it is, after the final flush."""
        with pytest.raises(KeyError):
            async with AsyncSessionStore(session_path) as store:
                await store.increment_errors()
                raise KeyError("boom")
        assert (await read_on_disk(session_path))["stats"]["errors"] == 1

    async def test_cancelling_the_block_still_flushes(self, session_path: Path) -> None:
        """A cancel scope around the block does not stop the final flush."""
        with anyio.CancelScope() as scope:
            async with AsyncSessionStore(session_path) as store:
                await store.increment_tool_calls(4)
                scope.cancel()
                await anyio.sleep_forever()
        assert (await read_on_disk(session_path))["stats"]["toolCalls"] == 4


class TestHostLifecycles:
    async def test_opened_in_one_task_and_closed_in_another(self, session_path: Path) -> None:
        """open() and aclose() from two tasks, as aiohttp's on_startup and on_cleanup do."""
        store = AsyncSessionStore(session_path)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(store.open)
        await store.increment_tool_calls(2)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(store.aclose)
        assert (await read_on_disk(session_path))["stats"]["toolCalls"] == 2

    async def test_left_inside_a_cancel_scope_of_the_hosts(self, session_path: Path) -> None:
        """A host may leave the block inside a cancel scope of its own, as FastMCP does."""
        store = AsyncSessionStore(session_path)
        await store.__aenter__()
        await store.increment_tool_calls(3)
        with anyio.CancelScope():
            await store.__aexit__(None, None, None)
        assert (await read_on_disk(session_path))["stats"]["toolCalls"] == 3

    async def test_two_blocks_left_in_the_order_they_were_entered(self, tmp_path: Path) -> None:
        """Stores entered by hand may be left in any order."""
        first = AsyncSessionStore(tmp_path / "first.json")
        second = AsyncSessionStore(tmp_path / "second.json")
        await first.__aenter__()
        await second.__aenter__()
        await first.increment_tool_calls()
        await second.increment_errors()
        await first.__aexit__(None, None, None)
        await second.__aexit__(None, None, None)
        assert (await read_on_disk(tmp_path / "first.json"))["stats"]["toolCalls"] == 1
        assert (await read_on_disk(tmp_path / "second.json"))["stats"]["errors"] == 1

    async def test_closed_from_another_task_while_still_opening(
        self, session_path: Path, interposed: Interposed
    ) -> None:
        """An aclose() that comes while open() is writing waits for it, then closes."""
        started, release = threading.Event(), threading.Event()
        interposed.hold(started, release)
        store = AsyncSessionStore(backend=interposed)
        opening = asyncio.ensure_future(store.open())
        await anyio.to_thread.run_sync(started.wait)
        closing = asyncio.ensure_future(store.aclose())
        await anyio.wait_all_tasks_blocked()
        release.set()
        with anyio.fail_after(30):
            await opening
            await closing
        with pytest.raises(StoreClosedError):
            await store.increment_tool_calls()

    async def test_a_close_interrupted_natively_still_ends(
        self, session_path: Path, interposed: Interposed
    ) -> None:
        """A native task.cancel() of aclose() leaves the close running to its end."""
        started, release = threading.Event(), threading.Event()
        store = await AsyncSessionStore(backend=interposed).open()
        await store.increment_tool_calls(3)
        interposed.hold(started, release)
        closing = asyncio.ensure_future(store.aclose())
        await anyio.to_thread.run_sync(started.wait)
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        release.set()
        with anyio.fail_after(30):
            await store.aclose()  # waits for the close that goes on
        assert (await read_on_disk(session_path))["stats"]["toolCalls"] == 3

    async def test_a_background_flush_that_will_not_stop_does_not_hang_the_close(
        self,
        session_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Stand-in for a flush task broken at a random moment: close gives up on it in time."""
        release = anyio.Event()

        async def stubborn(self: AsyncSessionStore) -> None:
            with anyio.CancelScope(shield=True):
                await release.wait()

        monkeypatch.setattr(AsyncSessionStore, "_flush_periodically", stubborn)
        store = await AsyncSessionStore(session_path, close_timeout=0.2).open()
        await store.increment_tool_calls(2)
        with anyio.fail_after(30):
            await store.aclose()
        release.set()
        assert "did not stop" in caplog.text
        assert (await read_on_disk(session_path))["stats"]["toolCalls"] == 2

    async def test_closed_right_after_opening(self, session_path: Path) -> None:
        """A close before the background flush ever ran leaves no task behind."""
        store = await AsyncSessionStore(session_path).open()
        await store.aclose()
        names = [task.get_name() for task in asyncio.all_tasks()]
        assert not [name for name in names if name.startswith("aiosessionstore")]


class TestConfiguration:
    @pytest.mark.parametrize("interval", [0, -1, float("nan")])
    def test_flush_interval_must_be_positive(self, session_path: Path, interval: float) -> None:
        """A flush interval of zero or less would spin: it is refused at once."""
        with pytest.raises(ValueError, match="flush_interval"):
            AsyncSessionStore(session_path, flush_interval=interval)

    def test_flush_interval_must_be_a_number(self, session_path: Path) -> None:
        """A string of seconds is a mistake worth a TypeError."""
        with pytest.raises(TypeError, match="flush_interval"):
            AsyncSessionStore(session_path, flush_interval="60")  # type: ignore[arg-type]

    def test_repr_names_the_path_and_state(self, session_path: Path) -> None:
        """The repr helps a log line say which store it was."""
        assert repr(AsyncSessionStore(session_path)) == (
            f"<AsyncSessionStore FileBackend({str(session_path)!r}) closed>"
        )


class TestBackgroundFlush:
    async def test_changes_are_flushed_every_interval(
        self, session_path: Path, interposed: Interposed
    ) -> None:
        """With changes pending, the background task writes them without being asked."""
        async with AsyncSessionStore(backend=interposed, flush_interval=0.001) as store:
            await store.increment_tool_calls(2)
            await interposed.wait_for_writes(2)
            assert (await read_on_disk(session_path))["stats"]["toolCalls"] == 2

    async def test_nothing_pending_writes_nothing(
        self, session_path: Path, interposed: Interposed
    ) -> None:
        """A flush with no change since the last one does no I/O at all."""
        async with AsyncSessionStore(backend=interposed) as store:
            opened = interposed.calls
            await store.flush()
            await store.flush()
        assert interposed.calls == opened

    async def test_a_failed_background_flush_is_logged_and_retried(
        self,
        session_path: Path,
        interposed: Interposed,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A failing write keeps the counts pending; the next flush writes them."""
        async with AsyncSessionStore(backend=interposed, flush_interval=0.001) as store:
            interposed.fail_first(1)
            await store.increment_errors(3)
            await interposed.wait_for_writes(2)
            assert interposed.calls == 3  # the open, the failed write, the one sent again
            assert (await read_on_disk(session_path))["stats"]["errors"] == 3
        assert "background flush" in caplog.text
        assert "disk on fire" in caplog.text
        assert caplog.records[0].levelno == logging.WARNING


class TestExplicitFlush:
    @pytest.mark.parametrize("operation", ["flush", "reset_stats", "new_session"])
    async def test_a_failed_write_raises_and_keeps_the_counts(
        self, session_path: Path, interposed: Interposed, operation: str
    ) -> None:
        """A write that fails changed nothing: it raises, and the counts stay pending."""
        async with AsyncSessionStore(backend=interposed) as store:
            session_id = store.session_id
            await store.increment_tool_calls(5)
            interposed.fail_first(1, "no space left on device")
            with pytest.raises(SessionStoreError, match="no space"):
                await getattr(store, operation)()
            assert store.session.stats.tool_calls == 5
            assert store.session_id == session_id
        assert (await read_on_disk(session_path))["stats"]["toolCalls"] == 5

    async def test_a_held_lock_times_out(self, session_path: Path) -> None:
        """A lock another holder keeps is waited for a bounded time, then LockTimeoutError."""
        async with AsyncSessionStore(session_path, lock_timeout=0.05) as store:
            await store.increment_tool_calls()
            holder = filelock.FileLock(str(session_path) + ".lock", thread_local=False)
            await anyio.to_thread.run_sync(holder.acquire)
            try:
                with pytest.raises(LockTimeoutError, match="another process holds"):
                    await store.flush()
            finally:
                await anyio.to_thread.run_sync(holder.release)
            assert store.session.stats.tool_calls == 1

    @pytest.mark.parametrize("outcome", ["written", "failed"])
    async def test_a_cancelled_flush_is_all_or_nothing(
        self, session_path: Path, interposed: Interposed, outcome: str
    ) -> None:
        """Cancelled mid-write, a flush lands exactly once or stays pending, never both."""
        started, release = threading.Event(), threading.Event()

        def held() -> None:
            started.set()
            release.wait(10)
            if outcome == "failed":
                raise SessionStoreError("disk full")

        async with AsyncSessionStore(backend=interposed) as store:
            await store.increment_tool_calls(6)
            interposed.before = held
            flush = asyncio.ensure_future(store.flush())
            await anyio.to_thread.run_sync(started.wait)
            flush.cancel()
            await asyncio.sleep(0)  # deliver the cancellation while the write is held
            release.set()
            with pytest.raises(asyncio.CancelledError):
                await flush
            interposed.before = None
            assert store.session.stats.tool_calls == 6
        assert (await read_on_disk(session_path))["stats"]["toolCalls"] == 6


class TestResetAndNewSession:
    async def test_reset_keeps_id_and_creation_time(self, session_path: Path) -> None:
        """reset_stats() zeroes the counters on disk at once; id and createdAt stay."""
        async with AsyncSessionStore(session_path) as store:
            before = store.session
            await store.increment_tool_calls(9)
            await store.flush()
            after = await store.reset_stats()
            assert after.session_id == before.session_id
            assert after.created_at == before.created_at
            assert after.stats == SessionStats()
            assert (await read_on_disk(session_path))["stats"]["toolCalls"] == 0

    async def test_reset_drops_pending_counts_too(self, session_path: Path) -> None:
        """Counts not yet flushed are zeroed with the rest."""
        async with AsyncSessionStore(session_path) as store:
            await store.increment_prompt_calls(4)
            await store.reset_stats()
            await store.increment_prompt_calls()
        assert (await read_on_disk(session_path))["stats"]["promptCalls"] == 1

    async def test_new_session_changes_the_id(self, session_path: Path) -> None:
        """new_session() is the seed's forceNew, at any time, written at once."""
        async with AsyncSessionStore(session_path) as store:
            old_id = store.session_id
            await store.increment_errors(2)
            session = await store.new_session()
            assert session.session_id != old_id
            assert session.stats == SessionStats()
            assert store.session_id == session.session_id
            assert (await read_on_disk(session_path))["sessionId"] == session.session_id

    async def test_both_keep_unknown_keys(self, session_path: Path) -> None:
        """Keys another tool stored beside the session survive resets and new sessions."""
        async with AsyncSessionStore(session_path):
            pass
        document = await read_on_disk(session_path)
        document["plugin"] = {"theme": "dark"}
        await write_text(session_path, json.dumps(document))
        async with AsyncSessionStore(session_path) as store:
            await store.reset_stats()
            assert (await read_on_disk(session_path))["plugin"] == {"theme": "dark"}
            await store.new_session()
        assert (await read_on_disk(session_path))["plugin"] == {"theme": "dark"}


class TestDelete:
    async def test_delete_removes_the_file(self, session_path: Path) -> None:
        """delete() is True when a file was removed, False when there was none."""
        async with AsyncSessionStore(session_path) as store:
            assert await store.delete() is True
            assert not await anyio.Path(session_path).exists()
            assert await store.delete() is False
        assert not await anyio.Path(session_path).exists()

    async def test_after_delete_the_next_change_starts_a_new_session(
        self, session_path: Path
    ) -> None:
        """Pending counts die with the file; the next change writes the new id it shows."""
        async with AsyncSessionStore(session_path) as store:
            old_id = store.session_id
            await store.increment_tool_calls(8)
            await store.delete()
            new_id = store.session_id
            assert new_id != old_id
            assert store.session.stats == SessionStats()
            await store.increment_tool_calls()
        on_disk = await read_on_disk(session_path)
        assert on_disk["sessionId"] == new_id
        assert on_disk["stats"]["toolCalls"] == 1

    async def test_the_lock_file_is_never_deleted(self, session_path: Path) -> None:
        """Deleting the lock file would let two processes hold "the" lock at once."""
        async with AsyncSessionStore(session_path) as store:
            await store.delete()
        assert await anyio.Path(str(session_path) + ".lock").exists()

    async def test_a_newer_version_is_left_alone(self, session_path: Path) -> None:
        """A file another, newer tool wrote meanwhile is not ours to delete: refused, as is."""
        async with AsyncSessionStore(session_path) as store:
            newer = json.dumps({**await read_on_disk(session_path), "version": 2})
            await write_text(session_path, newer)
            with pytest.raises(UnsupportedVersionError):
                await store.delete()
        assert await anyio.Path(session_path).read_text() == newer

    async def test_a_corrupt_file_is_moved_aside_not_deleted(self, session_path: Path) -> None:
        """Bad files are kept: delete() moves a corrupt one aside, and is True."""
        async with AsyncSessionStore(session_path) as store:
            await write_text(session_path, "{oops")
            assert await store.delete() is True
        [aside] = [p async for p in anyio.Path(session_path.parent).glob("session.json.corrupt-*")]
        assert await aside.read_text() == "{oops"


class TestFileChangedUnderneath:
    async def test_a_deleted_file_is_not_resurrected(self, session_path: Path) -> None:
        """Deleted by someone else, the session stays deleted: pending counts start a new one."""
        async with AsyncSessionStore(session_path) as store:
            old_id = store.session_id
            await store.increment_tool_calls(100)
            await store.flush()
            await anyio.Path(session_path).unlink()
            await store.increment_tool_calls(2)
            await store.flush()
            assert store.session_id != old_id
        on_disk = await read_on_disk(session_path)
        assert on_disk["sessionId"] == store.session_id
        assert on_disk["stats"]["toolCalls"] == 2

    async def test_a_removed_directory_is_recreated(self, session_path: Path) -> None:
        """As in the seed, the directory comes back at the next write."""
        async with AsyncSessionStore(session_path) as store:
            await store.increment_errors()
            async for name in anyio.Path(session_path.parent).iterdir():
                await name.unlink()
            await anyio.Path(session_path.parent).rmdir()
        assert (await read_on_disk(session_path))["stats"]["errors"] == 1

    async def test_another_writers_session_is_adopted(self, session_path: Path) -> None:
        """The file is the truth: a new id written by another process is taken up at a flush."""
        async with (
            AsyncSessionStore(session_path) as store,
            AsyncSessionStore(session_path) as other,
        ):
            await store.increment_tool_calls()
            replaced = await other.new_session()
            await store.flush()
            assert store.session_id == replaced.session_id
        assert (await read_on_disk(session_path))["stats"]["toolCalls"] == 1

    async def test_a_file_corrupted_later_is_rewritten_from_the_known_session(
        self, session_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Corrupt at a flush: moved aside, then the last known session plus pending is written."""
        async with AsyncSessionStore(session_path) as store:
            await store.increment_tool_calls(10)
            await store.flush()
            await write_text(session_path, "{ truncated")
            await store.increment_tool_calls(1)
        on_disk = await read_on_disk(session_path)
        assert on_disk["sessionId"] == store.session_id
        assert on_disk["stats"]["toolCalls"] == 11
        [aside] = [p async for p in anyio.Path(session_path.parent).glob("*.corrupt-*")]
        assert await aside.read_text() == "{ truncated"
        assert str(aside) in caplog.text
