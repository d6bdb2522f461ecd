"""Shutdown paths: signals, interpreter exit, fork, a stuck disk and a busy thread pool."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import pytest

from aiosessionstore import AsyncSessionStore, _lock

from .conftest import (
    WORKER,
    Interposed,
    posix_only,
    read_json,
    start_worker,
    tool_calls_on_disk,
    wait_for_line,
)


def run_until_ready(mode: str, path: Path, *arguments: str) -> subprocess.Popen[str]:
    """Start a worker and wait until it has counted and says it is ready."""
    worker = start_worker(mode, path, *arguments)
    wait_for_line(worker, "ready")
    return worker


def wakeup_fd() -> int:
    """The fd signals are written to, as ``signal.set_wakeup_fd`` only tells when replacing it."""
    current = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(current)
    return current


@posix_only
class TestSignals:
    @pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
    def test_the_signal_flushes_then_kills(self, session_path: Path, signum: int) -> None:
        """Pending counts reach the disk, then the process dies of the signal as it would have."""
        worker = run_until_ready("wait-for-signal", session_path, "25")
        worker.send_signal(signum)
        _, err = worker.communicate(timeout=30)
        assert worker.returncode == -signum, err
        assert tool_calls_on_disk(session_path) == 25

    def test_a_signal_taken_by_another_thread_still_wakes_the_loop(
        self, session_path: Path
    ) -> None:
        """The kernel may hand SIGTERM to any thread; the sleeping loop must still flush."""
        worker = run_until_ready("signal-on-another-thread", session_path, "11")
        _, err = worker.communicate("now\n", timeout=30)
        assert worker.returncode == -signal.SIGTERM, err
        assert tool_calls_on_disk(session_path) == 11

    def test_a_forked_child_leaves_the_parents_loop_woken_by_signals(
        self, session_path: Path
    ) -> None:
        """A child forked and gone does not unregister the wakeup from the epoll they share."""
        worker = run_until_ready("signal-on-another-thread", session_path, "12", "yes")
        _, err = worker.communicate("now\n", timeout=30)
        assert worker.returncode == -signal.SIGTERM, err
        assert tool_calls_on_disk(session_path) == 12

    def test_our_own_handler_put_back_is_not_taken_for_the_previous_one(
        self, session_path: Path
    ) -> None:
        """Put back by an app and installed again, our handler chains to the real previous one."""
        worker = run_until_ready("handler-saved-and-put-back", session_path, "8")
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=30)
        assert worker.returncode == -signal.SIGTERM, err
        assert tool_calls_on_disk(session_path) == 8

    def test_a_signal_whose_flush_the_stopping_loop_dropped_is_not_swallowed(
        self, session_path: Path
    ) -> None:
        """If the loop stops before the flush a signal asked for, the next signal acts at once."""
        worker = start_worker("signal-as-the-loop-stops", session_path, "6")
        wait_for_line(worker, "lingering")
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=30)
        assert worker.returncode == -signal.SIGTERM, err
        assert tool_calls_on_disk(session_path) == 6

    def test_the_apps_own_handler_still_runs(self, session_path: Path) -> None:
        """A handler the app set before opening runs after the flush, and decides the exit."""
        worker = run_until_ready("with-app-handler", session_path, "7")
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=30)
        assert worker.returncode == 3, err
        assert out == "app handler ran\n"
        assert tool_calls_on_disk(session_path) == 7

    def test_a_handler_set_later_takes_the_signal_and_the_store_flushes(
        self, session_path: Path
    ) -> None:
        """A handler set after the store opened (uvicorn's) takes SIGTERM and is left to it:
        the store flushes at once all the same; the app then puts ours back and raises the
        signal again, as uvicorn does, and the process dies of it."""
        worker = run_until_ready("like-uvicorn", session_path, "9")
        worker.send_signal(signal.SIGTERM)
        wait_for_line(worker, "on disk")
        _, err = worker.communicate("go\n", timeout=30)
        assert worker.returncode == -signal.SIGTERM, err
        assert tool_calls_on_disk(session_path) == 9

    def test_without_a_running_loop_the_flush_is_synchronous(self, session_path: Path) -> None:
        """A signal after the loop stopped still flushes, in the handler, then kills."""
        worker = run_until_ready("signal-after-loop-stopped", session_path, "17")
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=30)
        assert worker.returncode == -signal.SIGTERM, err
        assert tool_calls_on_disk(session_path) == 17

    @pytest.mark.anyio
    async def test_in_process_the_loop_flushes_then_the_app_handler_runs(
        self, session_path: Path
    ) -> None:
        """The handler only wakes the loop; the flush runs there, then the app's handler."""
        before = signal.getsignal(signal.SIGHUP)
        app_ran = threading.Event()
        seen_on_disk: list[int] = []

        def app_handler(signum: int, frame: object) -> None:
            seen_on_disk.append(tool_calls_on_disk(session_path))
            app_ran.set()

        signal.signal(signal.SIGHUP, app_handler)
        try:
            async with AsyncSessionStore(session_path) as store:
                await store.increment_tool_calls(21)
                signal.raise_signal(signal.SIGHUP)
                signal.raise_signal(signal.SIGHUP)  # during the flush: no second flush
                with anyio.fail_after(10):
                    await anyio.to_thread.run_sync(app_ran.wait)
            assert seen_on_disk == [21]
        finally:
            signal.signal(signal.SIGHUP, before)

    def test_handle_signals_false_leaves_signals_alone(self, session_path: Path) -> None:
        """Turned off, SIGTERM kills at once and the pending counts are not written."""
        worker = run_until_ready("wait-for-signal", session_path, "9", "no")
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=30)
        assert worker.returncode == -signal.SIGTERM
        assert tool_calls_on_disk(session_path) == 0

    def test_sigint_under_asyncio_run_still_flushes(self, session_path: Path) -> None:
        """Ctrl-C cancels the block, and the final flush runs all the same."""
        worker = run_until_ready("ctrl-c-while-asleep", session_path, "11")
        _, err = worker.communicate("now\n", timeout=30)
        assert worker.returncode in (-signal.SIGINT, 1), err
        assert "KeyboardInterrupt" in err
        assert tool_calls_on_disk(session_path) == 11

    @pytest.mark.anyio
    async def test_closing_restores_the_previous_handlers(self, session_path: Path) -> None:
        """After the block, SIGTERM and SIGHUP have exactly the handlers they had before."""
        before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
        async with AsyncSessionStore(session_path):
            assert signal.getsignal(signal.SIGTERM) != before[signal.SIGTERM]
        assert {s: signal.getsignal(s) for s in before} == before

    @pytest.mark.anyio
    @pytest.mark.parametrize("order", ["as-opened", "reversed"])
    async def test_two_stores_closed_in_any_order_restore_the_handlers(
        self, tmp_path: Path, order: str
    ) -> None:
        """However overlapping stores close, the handlers from before the first are back."""
        before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
        async with (
            AsyncSessionStore(tmp_path / "first.json") as first,
            AsyncSessionStore(tmp_path / "second.json") as second,
        ):
            closing = [first, second] if order == "as-opened" else [second, first]
            await closing[0].aclose()
            assert signal.getsignal(signal.SIGTERM) != before[signal.SIGTERM]  # one still open
            await closing[1].aclose()
            assert {s: signal.getsignal(s) for s in before} == before
            assert wakeup_fd() == -1

    @pytest.mark.anyio
    async def test_one_signal_flushes_every_open_store(self, tmp_path: Path) -> None:
        """With two stores open, a signal writes both before the app's handler runs."""
        before = signal.getsignal(signal.SIGHUP)
        paths = [tmp_path / "first.json", tmp_path / "second.json"]
        app_ran = threading.Event()
        seen_on_disk: list[int] = []

        def app_handler(signum: int, frame: object) -> None:
            seen_on_disk.extend(tool_calls_on_disk(path) for path in paths)
            app_ran.set()

        signal.signal(signal.SIGHUP, app_handler)
        try:
            async with (
                AsyncSessionStore(paths[0]) as first,
                AsyncSessionStore(paths[1]) as second,
            ):
                await first.increment_tool_calls(4)
                await second.increment_tool_calls(5)
                signal.raise_signal(signal.SIGHUP)
                with anyio.fail_after(30):
                    await anyio.to_thread.run_sync(app_ran.wait)
            assert seen_on_disk == [4, 5]
            assert signal.getsignal(signal.SIGHUP) == app_handler
        finally:
            signal.signal(signal.SIGHUP, before)

    @pytest.mark.anyio
    async def test_closing_unsets_the_wakeup_fd_it_set(self, session_path: Path) -> None:
        """The fd that makes any thread's signal wake the loop goes away with the store."""
        assert wakeup_fd() == -1
        async with AsyncSessionStore(session_path):
            assert wakeup_fd() != -1
        assert wakeup_fd() == -1

    @pytest.mark.anyio
    async def test_asyncios_own_wakeup_fd_is_left_in_place(self, session_path: Path) -> None:
        """With ``loop.add_signal_handler`` in use, asyncio already wakes the loop on signals."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, lambda: None)
        try:
            asyncios = wakeup_fd()
            async with AsyncSessionStore(session_path):
                assert wakeup_fd() == asyncios
            assert wakeup_fd() == asyncios
        finally:
            loop.remove_signal_handler(signal.SIGUSR1)

    @pytest.mark.anyio
    async def test_a_handler_the_app_sets_later_is_kept(self, session_path: Path) -> None:
        """Closing does not undo a handler the app installed while the store was open."""
        before = signal.getsignal(signal.SIGHUP)

        def app_handler(signum: int, frame: object) -> None:
            pass

        try:
            async with AsyncSessionStore(session_path):
                signal.signal(signal.SIGHUP, app_handler)
            assert signal.getsignal(signal.SIGHUP) == app_handler
        finally:
            signal.signal(signal.SIGHUP, before)


class TestInterpreterExit:
    def test_an_unclosed_store_is_flushed_and_warned_about(self, session_path: Path) -> None:
        """A store never closed (its loop abandoned) is flushed at exit, with a ResourceWarning."""
        done = subprocess.run(
            [sys.executable, "-W", "always::ResourceWarning", str(WORKER), "never-closed",
             str(session_path), "13"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "ResourceWarning" in done.stderr
        assert "never closed" in done.stderr
        assert tool_calls_on_disk(session_path) == 13

    @posix_only
    @pytest.mark.parametrize("handler", ["python's", "app's"])
    def test_ctrl_c_during_the_exit_flush_lets_it_land(
        self, session_path: Path, handler: str
    ) -> None:
        """Ctrl-C while the exit hook's flush waits for the lock is said and held off: no
        KeyboardInterrupt inside the hook, and the counts land; then an app's own SIGINT
        handler gets it."""
        worker = start_worker("ctrl-c-at-exit", session_path, handler)
        wait_for_line(worker, "counted")
        with lock_held_by_the_test(session_path):
            say_to(worker, "locked")
            wait_for_line(worker, "waiting")
            worker.send_signal(signal.SIGINT)
        out, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        assert "Ctrl-C at exit" in err
        assert "KeyboardInterrupt" not in err
        assert tool_calls_on_disk(session_path) == 5, err
        assert out == ("app's handler\n" if handler == "app's" else "")

    def test_a_store_left_open_by_asyncio_run_is_closed_without_warnings(
        self, session_path: Path
    ) -> None:
        """``asyncio.run`` ending right after the open closes the store, saves its counts and
        leaves no "coroutine was never awaited" warning behind."""
        done = subprocess.run(
            [sys.executable, "-W", "always", str(WORKER), "left-open", str(session_path), "7"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "Warning" not in done.stderr, done.stderr
        assert tool_calls_on_disk(session_path) == 7


@posix_only
class TestFork:
    def test_a_forked_child_does_not_flush_the_parents_counts(self, session_path: Path) -> None:
        """The parent's pending counts are written once, by the parent, not again by the child."""
        done = subprocess.run(
            [sys.executable, str(WORKER), "fork-with-pending", str(session_path), "5"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout == "child exit 0\n"
        assert tool_calls_on_disk(session_path) == 5

    @pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux's /proc")
    def test_a_child_forked_while_the_lock_is_awaited_does_not_keep_it(
        self, session_path: Path
    ) -> None:
        """A lock the parent takes after the fork, on a file open before it, is not the child's."""
        worker = start_worker("fork-while-waiting-for-the-lock", session_path)
        hold_the_lock_until(worker, "forked", session_path)
        out, err = worker.communicate(timeout=60)
        assert out == "lock free\n", err
        assert tool_calls_on_disk(session_path) == 3

    def test_a_child_forked_mid_flush_does_not_keep_the_lock(self, session_path: Path) -> None:
        """A child's copy of a held lock descriptor is closed, so the lock is freed on time."""
        session_path.parent.mkdir()
        done = subprocess.run(
            [sys.executable, str(WORKER), "fork-while-locked", str(session_path)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout == "parent got the lock back\n"


@pytest.mark.anyio
class TestStuckDisk:
    async def test_closing_gives_up_after_close_timeout(
        self,
        session_path: Path,
        interposed: Interposed,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A write that never ends cannot hang shutdown: close returns after close_timeout."""
        release = threading.Event()
        try:
            with anyio.fail_after(10):
                async with AsyncSessionStore(backend=interposed, close_timeout=0.05) as store:
                    interposed.hold(threading.Event(), release)
                    await store.increment_tool_calls()
        finally:
            release.set()
        assert "took longer than 0.05 s" in caplog.text


@pytest.mark.anyio
class TestTheStoresOwnThread:
    async def test_closing_does_not_queue_behind_the_applications_threads(
        self, session_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A server whose blocking calls fill asyncio's default executor still saves on close:
        the store's I/O has a thread of its own."""
        loop = asyncio.get_running_loop()
        busy = ThreadPoolExecutor(max_workers=1)
        loop.set_default_executor(busy)
        release = threading.Event()
        blocked = loop.run_in_executor(None, release.wait, 30)
        try:
            with anyio.fail_after(10):
                async with AsyncSessionStore(session_path, close_timeout=5) as store:
                    await store.increment_tool_calls(3)
                on_disk = await anyio.to_thread.run_sync(read_json, session_path)
        finally:
            release.set()
            await blocked
        assert on_disk["stats"]["toolCalls"] == 3
        assert "took longer" not in caplog.text

    async def test_ends_when_the_store_closes(self, session_path: Path) -> None:
        before = set(threading.enumerate())
        async with AsyncSessionStore(session_path) as store:
            await store.flush()
            ours = [t for t in set(threading.enumerate()) - before if t.name.startswith("aios")]
            assert len(ours) == 1
        ours[0].join(10)
        assert not ours[0].is_alive()


@contextlib.contextmanager
def lock_held_by_the_test(session_path: Path) -> Iterator[None]:
    """Hold the session's lock file from this process, as another writer would."""
    with _lock.held(session_path.with_name(session_path.name + ".lock"), timeout=30):
        yield


def say_to(worker: subprocess.Popen[str], line: str) -> None:
    assert worker.stdin is not None
    worker.stdin.write(line + "\n")
    worker.stdin.flush()


def hold_the_lock_until(worker: subprocess.Popen[str], line: str, session_path: Path) -> None:
    """Once the worker is open, hold the lock until it says ``line``; then release it."""
    wait_for_line(worker, "open")
    with lock_held_by_the_test(session_path):
        say_to(worker, "locked")
        wait_for_line(worker, line)
    say_to(worker, "released")


@posix_only
class TestExactlyOnce:
    def test_cancelling_every_task_mid_flush_writes_each_count_once(
        self, session_path: Path
    ) -> None:
        """A flush cancelled while its thread waits for the lock lands once, not again at close."""
        worker = start_worker("cancel-everything-mid-flush", session_path)
        hold_the_lock_until(worker, "cancelled", session_path)
        _, err = worker.communicate(timeout=60)
        assert tool_calls_on_disk(session_path) == 3, err

    def test_counts_made_while_the_signal_flushes_are_flushed_too(self, session_path: Path) -> None:
        """Tasks that count while SIGTERM's flush waits for the lock: flushed before it kills."""
        worker = start_worker("count-while-the-signal-flushes", session_path)
        hold_the_lock_until(worker, "counted", session_path)
        _, err = worker.communicate(timeout=60)
        assert worker.returncode == -signal.SIGTERM, err
        assert tool_calls_on_disk(session_path) == 8, err

    def test_a_server_that_goes_on_counting_dies_of_the_signal_all_the_same(
        self, session_path: Path
    ) -> None:
        """SIGTERM while a task counts without end: a few flushes (not close_timeout's 600 s of
        them), what is still pending is named in the log, and the process dies of it."""
        worker = start_worker("count-through-the-signal", session_path)
        _, err = worker.communicate(timeout=60)
        assert worker.returncode == -signal.SIGTERM, err
        assert "counts not saved before signal SIGTERM: " in err
        assert tool_calls_on_disk(session_path) > 0, err

    @pytest.mark.parametrize("after", [30, 200])
    def test_a_flush_under_way_at_the_signal_lands_before_it_kills(
        self, session_path: Path, after: int
    ) -> None:
        """SIGTERM to an app that flushes as it counts: every count made is on disk, or named
        in the log as not known to be saved, and none twice. A flush the app began after the
        signal's own had returned used to die with the process, unsaid."""
        worker = start_worker("flush-through-the-signal", session_path)
        assert worker.stdout is not None
        for line in iter(worker.stdout.readline, ""):  # the counts made so far, by tens
            if line == f"{after}\n":
                break
        else:
            raise AssertionError(f"the worker ended first: {worker.communicate(timeout=30)}")
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=60)
        assert worker.returncode == -signal.SIGTERM, err
        made = int(out.split()[-1]) if out else after
        logged = re.search(r"counts not saved before signal SIGTERM: (\d+) tool calls", err)
        on_disk = tool_calls_on_disk(session_path)  # a write named may land as the process dies
        assert on_disk <= made <= on_disk + (int(logged[1]) if logged else 0), err

    def test_a_close_that_gave_up_writes_its_counts_once_when_the_write_lands(
        self, session_path: Path
    ) -> None:
        """The closing flush's late write is the only one: the exit hook does not repeat it."""
        worker = start_worker("close-gives-up", session_path, 0.2, "late-write")
        hold_the_lock_until(worker, "closed", session_path)
        _, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        assert "took longer than 0.2 s" in err
        assert tool_calls_on_disk(session_path) == 3, err


@posix_only
class TestExitBound:
    def test_a_flush_on_a_signal_that_gives_up_says_what_follows(self, session_path: Path) -> None:
        """A flush on SIGTERM that takes longer than close_timeout says that the signal
        takes its course, and no exit hook waits for it: the process dies of the signal."""
        worker = start_worker("stuck-on-signal", session_path, 0.2)
        wait_for_line(worker, "ready")
        with lock_held_by_the_test(session_path):
            worker.send_signal(signal.SIGTERM)
            _, err = worker.communicate(timeout=60)
        assert worker.returncode == -signal.SIGTERM, err
        assert "on a signal took longer than 0.2 s" in err
        assert "the signal takes its course" in err
        assert "exit hook" not in err

    @pytest.mark.parametrize("app_handler", ["no", "yes"])
    def test_a_signal_during_the_flush_is_passed_on_after_the_first(
        self, session_path: Path, app_handler: str
    ) -> None:
        """SIGHUP while SIGTERM's flush waits for the lock (systemd's SendSIGHUP=yes): once
        the flush is done each takes its course, in the order they came: SIGTERM's default
        ends the process; an app's SIGTERM handler that lets it live on runs, then SIGHUP's
        default ends it."""
        worker = start_worker("stuck-then-another-signal", session_path, app_handler)
        wait_for_line(worker, "ready")
        with lock_held_by_the_test(session_path):
            worker.send_signal(signal.SIGTERM)
            wait_for_line(worker, "waiting")
            worker.send_signal(signal.SIGHUP)
        out, err = worker.communicate(timeout=60)
        if app_handler == "yes":
            assert (worker.returncode, out) == (-signal.SIGHUP, "SIGTERM handled\n"), err
        else:
            assert (worker.returncode, out) == (-signal.SIGTERM, ""), err
        assert tool_calls_on_disk(session_path) == 3

    def test_a_process_ends_on_time_while_its_write_is_stuck(self, session_path: Path) -> None:
        """With the lock held elsewhere for good, exit takes 2 x close_timeout, not lock_timeout."""
        worker = start_worker("close-gives-up", session_path, 0.2, "exit")
        wait_for_line(worker, "open")
        with lock_held_by_the_test(session_path):
            say_to(worker, "locked")
            wait_for_line(worker, "closed")
            # lock_timeout is 600 s: ending well before it is the promise under test
            _, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        assert "gave up waiting" in err
        assert tool_calls_on_disk(session_path) == 0
