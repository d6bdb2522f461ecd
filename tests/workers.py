"""Worker processes for the process, signal and crash tests: ``python workers.py MODE PATH ...``.

Workers that must start together wait for a line on stdin first. A worker prints only what the
test reads: the library itself never writes to stdout.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import random
import selectors
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from aiosessionstore import AsyncSessionStore, SessionStoreError, _file, _lock
from aiosessionstore._codec import decode


def say(text: str) -> None:
    print(text, flush=True)


def store_at(where: str, **options: Any) -> AsyncSessionStore:
    """A store on a session file, or on Redis where ``where`` is a URL."""
    if "://" in where:
        return AsyncSessionStore(url=where, **options)
    return AsyncSessionStore(where, **options)


async def count(path: str, total: str, every: str) -> None:
    """Count ``total`` tool calls, flushing every ``every``; print each flushed total."""
    sys.stdin.readline()
    async with AsyncSessionStore(path, flush_interval=3600) as store:
        for number in range(1, int(total) + 1):
            await store.increment_tool_calls()
            if number % int(every) == 0:
                await store.flush()
                say(f"flushed {number}")
    say(f"session {store.session_id}")


async def wait_for_signal(
    path: str, total: str, handle_signals: str = "yes", fork_first: str = "no"
) -> None:
    """Count with nothing flushed (with ``fork_first``, fork a child that is gone at once),
    say so, then wait to be signalled."""
    async with store_at(path, flush_interval=3600, handle_signals=handle_signals == "yes") as store:
        await store.increment_tool_calls(int(total))
        if fork_first == "yes":
            fork_a_short_lived_child()
        say("ready")
        await asyncio.Event().wait()


async def with_app_handler(path: str, total: str) -> None:
    """The app's own SIGTERM handler, set before the store opens, must still run."""

    def app_handler(signum: int, frame: FrameType | None) -> None:
        say("app handler ran")
        raise SystemExit(3)

    signal.signal(signal.SIGTERM, app_handler)
    await wait_for_signal(path, total)


class AnnouncingSelector(selectors.DefaultSelector):
    """A selector that says, through ``asleep``, when the loop sleeps in select()."""

    def __init__(self) -> None:
        super().__init__()
        self.asleep = threading.Event()

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is None or timeout > 0:
            self.asleep.set()
        try:
            return super().select(timeout)
        finally:
            self.asleep.clear()


def signal_once_asleep(selector: AnnouncingSelector, signum: int, to_main: bool) -> None:
    """On a line on stdin, send ``signum`` once the loop sleeps: to the main thread, or to
    this helper thread itself (a thread other than the loop's)."""

    def send() -> None:
        sys.stdin.readline()
        selector.asleep.wait()
        target = threading.main_thread() if to_main else threading.current_thread()
        signal.pthread_kill(target.ident or 0, signum)

    threading.Thread(target=send, daemon=True).start()


def signal_on_another_thread(path: str, total: str, fork_first: str = "no") -> None:
    """Count; then, on a line on stdin, take SIGTERM on a thread other than the loop's while
    the loop sleeps in select(), as the kernel may deliver it to any thread of the process.
    With ``fork_first``, a child forked and gone first: it shared the loop's epoll."""
    selector = AnnouncingSelector()
    signal_once_asleep(selector, signal.SIGTERM, to_main=False)
    run = wait_for_signal(path, total, "yes", fork_first)
    asyncio.SelectorEventLoop(selector).run_until_complete(run)


def ctrl_c_while_asleep(path: str, total: str) -> None:
    """Under asyncio.run, count; then, on a line on stdin, take SIGINT in the main thread once
    the loop sleeps in select(), as a Ctrl-C at an idle server does. (Delivered at any other
    bytecode, Python 3.10 raises KeyboardInterrupt there, inside whatever library runs.)"""
    selector = AnnouncingSelector()

    class Policy(asyncio.DefaultEventLoopPolicy):
        def new_event_loop(self) -> asyncio.AbstractEventLoop:
            return asyncio.SelectorEventLoop(selector)

    signal_once_asleep(selector, signal.SIGINT, to_main=True)
    asyncio.set_event_loop_policy(Policy())
    asyncio.run(wait_for_signal(path, total))


def fork_a_short_lived_child() -> None:
    """Fork a child that runs the fork hooks and exits at once, as a subprocess helper does."""
    import warnings

    warnings.simplefilter("ignore", DeprecationWarning)  # fork with a thread: on purpose
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


async def like_uvicorn(path: str, total: str) -> None:
    """Set a SIGTERM handler once the store is open, as uvicorn does, that only notes the
    signal; say whether the counts reached the disk meanwhile (waiting at most 60 s); then,
    on a line on stdin, put back the handler it replaced and raise the signal again, as
    uvicorn does once its connections have closed."""
    loop = asyncio.get_running_loop()
    caught = asyncio.Event()
    async with AsyncSessionStore(path, flush_interval=3600) as store:
        saved = signal.signal(signal.SIGTERM, lambda signum, frame: caught.set())
        await store.increment_tool_calls(int(total))
        say("ready")
        await caught.wait()
        waiting = loop.run_in_executor(None, wait_until_on_disk, path, int(total))
        try:
            await asyncio.wait_for(asyncio.shield(waiting), 60)
            say("on disk")
        except asyncio.TimeoutError:
            say("not on disk")
        await loop.run_in_executor(None, sys.stdin.readline)
        signal.signal(signal.SIGTERM, saved)
        signal.raise_signal(signal.SIGTERM)
        await asyncio.Event().wait()


async def handler_saved_and_put_back(path: str, total: str) -> None:
    """An app saves the handler while a store is open and puts it back after it closed, as
    servers that capture signals do; a store opened after that must still handle SIGTERM."""
    async with AsyncSessionStore(path + ".first", handle_signals=True):
        saved = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, saved)
    await wait_for_signal(path, total)


def never_closed(path: str, total: str, wait: str = "no") -> None:
    """Open and count on a loop that is then abandoned, as a crashed app would leave it; with
    ``wait``, say "counted" and wait for a line before the process ends."""

    async def open_and_count() -> None:
        store = store_at(path, flush_interval=3600)
        await store.__aenter__()
        await store.increment_tool_calls(int(total))

    asyncio.new_event_loop().run_until_complete(open_and_count())
    if wait == "yes":
        say("counted")
        sys.stdin.readline()


def ctrl_c_at_exit(path: str, handler: str = "python's") -> None:
    """Count 5 on a store never closed, say "counted" and wait for a line (the test takes the
    lock); then end, and say "waiting" once the exit hook's flush goes for the lock. With
    ``handler`` "app's", an app's SIGINT handler says "app's handler" when it runs."""
    if handler == "app's":
        signal.signal(signal.SIGINT, lambda signum, frame: say("app's handler"))
    goes_for_the_lock = probe_lock_waits()

    def announce() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # for the main thread
        goes_for_the_lock.wait()
        say("waiting")

    never_closed(path, "5")
    goes_for_the_lock.clear()
    threading.Thread(target=announce, daemon=True).start()
    say("counted")
    sys.stdin.readline()


async def left_open(path: str, total: str) -> None:
    """Open and count, then end ``asyncio.run`` at once: the loop stops in the same step in
    which the background flush is being started."""
    store = store_at(path, flush_interval=3600)
    await store.__aenter__()
    await store.increment_tool_calls(int(total))


def signal_after_loop_stopped(path: str, total: str) -> None:
    """Open and count, let the loop stop, then wait for a signal: it must flush without one."""
    never_closed(path, total)
    say("ready")
    time.sleep(60)


async def fork_with_pending(path: str, total: str) -> None:
    """Fork with counts pending: only the parent may write them."""
    async with AsyncSessionStore(path, flush_interval=3600) as store:
        await store.increment_tool_calls(int(total))
        pid = os.fork()
        if pid == 0:
            # The child runs its exit hooks, then leaves without tearing down the parent's
            # loop, whose epoll it shares.
            atexit._run_exitfuncs()
            os._exit(0)
        _, status = await asyncio.to_thread(os.waitpid, pid, 0)
        say(f"child exit {os.waitstatus_to_exitcode(status)}")


def kill_mid_flush(path: str, rounds: str) -> None:
    """Fork a writer that flushes back to back, SIGKILL it at a random moment after its first
    flush, check the file.

    Prints the files left in the directory and the count on disk. Each writer says when its
    first flush has landed, so every round adds at least one count: the kills land among
    writes, however slowly a writer starts.
    """
    asyncio.run(flush_forever(path, limit=1))  # import everything before forking
    for _ in range(int(rounds)):
        ready, flushed = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(ready)
            asyncio.run(flush_forever(path, flushed=flushed))
            os._exit(0)
        os.close(flushed)
        assert os.read(ready, 1) == b"!"
        os.close(ready)
        time.sleep(random.uniform(0, 0.005))  # the moment of the kill, not synchronization
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        with open(path, "rb") as file:
            tool_calls = decode(file.read()).session.stats.tool_calls
    say(json.dumps({"files": sorted(os.listdir(os.path.dirname(path))), "count": tool_calls}))


async def flush_forever(path: str, limit: int = -1, flushed: int | None = None) -> None:
    """Increment and flush ``limit`` times (or for ever); write "!" to ``flushed`` once."""
    async with AsyncSessionStore(path, flush_interval=3600, handle_signals=False) as store:
        while limit != 0:
            await store.increment_tool_calls()
            await store.flush()
            if flushed is not None:
                os.write(flushed, b"!")
                os.close(flushed)
                flushed = None
            limit -= 1


def fork_while_locked(path: str) -> None:
    """Fork while a thread holds the lock: the child's copy must not keep it held."""
    import threading
    import warnings
    from pathlib import Path

    from aiosessionstore._lock import held

    warnings.simplefilter("ignore", DeprecationWarning)  # fork with a thread: on purpose
    lock_path = Path(path + ".lock")
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        with held(lock_path, timeout=5):
            locked.set()
            release.wait()

    holder = threading.Thread(target=hold)
    holder.start()
    locked.wait()
    child = os.fork()
    if child == 0:
        time.sleep(30)  # a long-lived child, as a server's worker would be
        os._exit(0)
    release.set()
    holder.join()
    try:
        with held(lock_path, timeout=2):
            say("parent got the lock back")
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def probe_lock_waits() -> threading.Event:
    """An event the store's thread sets each time it goes for the lock file."""
    waiting = threading.Event()
    real = vars(_file)["held"]

    def probed(*arguments: Any) -> Any:
        waiting.set()
        return real(*arguments)

    vars(_file)["held"] = probed
    return waiting


def wait_until_on_disk(path: str, tool_calls: int) -> None:
    """Poll the file until it shows ``tool_calls``: an event another thread causes."""
    while True:
        with contextlib.suppress(FileNotFoundError, ValueError), open(path, "rb") as file:
            if decode(file.read()).session.stats.tool_calls == tool_calls:
                return
        time.sleep(0.001)


async def cancel_everything_mid_flush(path: str) -> None:
    """Start a flush that waits for a lock the test holds, then cancel every task, as an
    app's shutdown and asyncio.run's teardown do; the test then releases the lock."""
    async with AsyncSessionStore(path, flush_interval=3600, lock_timeout=600) as store:
        await store.increment_tool_calls(3)
        waiting = probe_lock_waits()
        say("open")
        await asyncio.to_thread(sys.stdin.readline)  # the test holds the lock now
        flush = asyncio.ensure_future(store.flush())
        await asyncio.to_thread(waiting.wait)
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()
        say("cancelled")
        await asyncio.to_thread(sys.stdin.readline)  # the test released the lock
        with contextlib.suppress(asyncio.CancelledError):
            await flush


def close_gives_up(path: str, close_timeout: str, then: str) -> None:
    """Close while the test holds the lock, so that close gives up, and let the loop end.
    Then either exit at once ("exit") or, once the test released the lock, wait for the
    late write to land before exiting ("late-write")."""

    async def count_and_close() -> None:
        async with AsyncSessionStore(
            path, flush_interval=3600, lock_timeout=600, close_timeout=float(close_timeout)
        ) as store:
            await store.increment_tool_calls(3)
            say("open")
            await asyncio.to_thread(sys.stdin.readline)  # the test holds the lock now

    asyncio.run(count_and_close())
    say("closed")
    if then == "late-write":
        sys.stdin.readline()  # the test released the lock
        wait_until_on_disk(path, 3)


async def stuck_on_signal(path: str, close_timeout: str) -> None:
    """Count with nothing flushed, say "ready", and wait to be signalled; the test holds the
    lock meanwhile, so the flush on the signal gives up after ``close_timeout``."""
    async with AsyncSessionStore(
        path, flush_interval=3600, lock_timeout=600, close_timeout=float(close_timeout)
    ) as store:
        await store.increment_tool_calls(3)
        say("ready")
        await asyncio.Event().wait()


async def stuck_then_another_signal(path: str, app_handler: str = "no") -> None:
    """Count 3 and say "ready"; the test holds the lock and signals: say "waiting" once the
    signal's flush waits for the lock, so that the test can send a second signal then. With
    ``app_handler``, the app's own SIGTERM handler, set before the store opened, says
    "SIGTERM handled" and lets the process live on."""
    if app_handler == "yes":
        signal.signal(signal.SIGTERM, lambda signum, frame: say("SIGTERM handled"))
    async with AsyncSessionStore(path, flush_interval=3600, lock_timeout=600) as store:
        await store.increment_tool_calls(3)
        waiting = probe_lock_waits()
        say("ready")
        await asyncio.to_thread(waiting.wait)
        say("waiting")
        await asyncio.Event().wait()


async def count_while_the_signal_flushes(path: str) -> None:
    """Count 5 and say "open"; once the test holds the lock, take SIGTERM, wait until its
    flush has taken the 5 (it then waits for the lock), count 3 more, and say "counted"."""
    async with AsyncSessionStore(
        path, flush_interval=3600, lock_timeout=600, close_timeout=60
    ) as store:
        await store.increment_tool_calls(5)
        say("open")
        await asyncio.to_thread(sys.stdin.readline)  # the test holds the lock now
        os.kill(os.getpid(), signal.SIGTERM)
        while store._pending.active_at is not None:  # noqa: ASYNC110 (no event says it took them)
            await asyncio.sleep(0)
        await store.increment_tool_calls(3)  # requests still being served
        say("counted")
        await asyncio.Event().wait()


async def count_through_the_signal(path: str) -> None:
    """Take SIGTERM while a task counts without end, as a busy server goes on serving."""
    async with AsyncSessionStore(path, flush_interval=3600, close_timeout=600) as store:

        async def serve() -> None:
            while True:
                await store.increment_tool_calls()
                await asyncio.sleep(0)

        serving = asyncio.create_task(serve())
        os.kill(os.getpid(), signal.SIGTERM)
        await serving


async def flush_through_the_signal(path: str) -> None:
    """Count ten and flush, again and again, saying the count made after each ten (in the
    same step of the loop as the counting), until SIGTERM; the test sends it."""
    async with AsyncSessionStore(path, flush_interval=3600) as store:
        made = 0
        while True:
            for _ in range(10):
                async with store.tool_call("t"):
                    pass
            made += 10
            say(str(made))
            await store.flush()


def lock_file_open(path: str) -> bool:
    """Whether this process has the lock file open (Linux's /proc tells)."""
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}") == path + ".lock":
                return True
    return False


async def fork_while_waiting_for_the_lock(path: str) -> None:
    """Fork while the store's thread has the lock file open but waits for the test's lock;
    once the test lets go, flush, and say whether the lock is free again."""
    import warnings

    warnings.simplefilter("ignore", DeprecationWarning)  # fork with a thread: on purpose
    async with AsyncSessionStore(path, flush_interval=3600, handle_signals=False) as store:
        await store.increment_tool_calls(3)
        say("open")
        await asyncio.to_thread(sys.stdin.readline)  # the test holds the lock now
        flush = asyncio.ensure_future(store.flush())
        while not lock_file_open(path):  # noqa: ASYNC110 - waits for the thread, not for time
            await asyncio.sleep(0.001)
        child = os.fork()
        if child == 0:
            signal.pause()  # a worker process that does not exec, until killed
            os._exit(0)
        say("forked")
        await asyncio.to_thread(sys.stdin.readline)  # the test released the lock
        await flush
        try:
            with _lock.held(Path(path + ".lock"), timeout=5):
                say("lock free")
        finally:
            os.kill(child, signal.SIGKILL)
            await asyncio.to_thread(os.waitpid, child, 0)


def signal_as_the_loop_stops(path: str, total: str) -> None:
    """Take SIGTERM in the loop's last batch of callbacks, so the flush it schedules never
    runs; then linger, as code after asyncio.run may, until the test signals again."""

    async def count_then_stop() -> None:
        store = AsyncSessionStore(path, flush_interval=3600)
        await store.open()
        await store.increment_tool_calls(int(total))
        loop = asyncio.get_running_loop()
        loop.call_soon(signal.raise_signal, signal.SIGTERM)
        loop.call_soon(loop.stop)
        await asyncio.Event().wait()

    loop = asyncio.new_event_loop()
    task = loop.create_task(count_then_stop())
    loop.run_forever()
    assert not task.done()  # the loop stopped under it, as an app's may
    say("lingering")
    time.sleep(60)


async def count_url(url: str, total: str, every: str, pause: str = "no") -> None:
    """On the store at ``url``: say "open", wait for a line, then ``total`` times count a
    tool call and a timed call of tool "search" by client "worker", flushing every ``every``
    (a failed flush is said and sent again later). With ``pause``, say "counted" and wait for
    a line before the last flush, which is tried until it lands."""
    async with AsyncSessionStore(url=url, flush_interval=3600, handle_signals=False) as store:
        say("open")
        await asyncio.to_thread(sys.stdin.readline)
        for number in range(1, int(total) + 1):
            await store.increment_tool_calls()
            async with store.tool_call("search", client="worker"):
                pass
            if number % int(every) == 0:
                await flush_once(store, number)
        if pause == "yes":
            say("counted")
            await asyncio.to_thread(sys.stdin.readline)
        for _ in range(100):  # each failure is a reply the test's proxy lost
            if await flush_once(store, int(total)):
                break
    say(f"session {store.session_id}")


async def flush_and_leave(url: str, total: str) -> None:
    """Count and flush ``total`` times on the store at ``url``, leave the block, and end the
    process at once."""
    async with AsyncSessionStore(url=url, flush_interval=3600, handle_signals=False) as store:
        for _ in range(int(total)):
            await store.increment_tool_calls()
            await store.flush()


async def flush_once(store: AsyncSessionStore, number: int) -> bool:
    try:
        await store.flush()
    except SessionStoreError:
        say("failed")
        return False
    say(f"flushed {number}")
    return True


def queue_for_the_lock(path: str, timeout: str, log: str) -> None:
    """Take the lock file ``path`` once alone (a process's first acquisition on a file system
    finds out whether it can queue there) and say "ready". At "take", queue for it, saying
    "queued" once in the queue and "got" once it has it, or "timed out <monotonic time>";
    then append this process's id to ``log`` and let go, or with ``log`` "-", hold it until
    "release". Either way, linger until stdin closes."""
    real = _lock._take_ticket

    def announced(fd: int, deadline: float) -> int:
        ticket = real(fd, deadline)
        say("queued")
        return ticket

    _lock._take_ticket = announced
    with _lock.held(Path(path), timeout=30):
        pass
    say("ready")
    assert sys.stdin.readline() == "take\n"
    asked = time.monotonic()
    try:
        with _lock.held(Path(path), timeout=float(timeout)):
            say("got")
            if log == "-":
                sys.stdin.readline()
            else:
                with open(log, "a") as file:
                    file.write(f"{os.getpid()}\n")
    except SessionStoreError as exc:
        now = time.monotonic()
        say(f"timed out {now} {now - asked} {exc}")
        if sys.stdin.readline() == "check\n":  # the wait's helper lets go once granted
            while has_open(path):  # waits for the helper, not for time
                time.sleep(0.001)
            say("closed")
    else:
        say("released")
    sys.stdin.read()


def has_open(path: str) -> bool:
    """Whether this process has the file ``path`` open (Linux's /proc tells)."""
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}") == path:
                return True
    return False


def fork_in_the_queue(path: str) -> None:
    """Take the lock file ``path`` once alone and say "ready"; at "take", queue for it in a
    thread and, once a helper waits in the kernel for the ticket before ours, fork a child
    that lingers and does not exec; say "forked <child's pid>" and linger until killed."""
    import warnings

    warnings.simplefilter("ignore", DeprecationWarning)  # fork with a thread: on purpose
    with _lock.held(Path(path), timeout=30):  # the first acquisition: alone
        pass
    say("ready")
    assert sys.stdin.readline() == "take\n"

    def take() -> None:
        with _lock.held(Path(path), timeout=600):
            say("got")

    threading.Thread(target=take, daemon=True).start()
    deadline = time.monotonic() + 30
    while not any(t.name == "aiosessionstore-queue" for t in threading.enumerate()):
        if time.monotonic() > deadline:
            say("no helper")
            return
        time.sleep(0.001)  # waits for the helper, not for time
    child = os.fork()
    if child == 0:
        null = os.open(os.devnull, os.O_RDWR)
        for stream in (0, 1, 2):
            os.dup2(null, stream)
        signal.pause()
        os._exit(0)
    say(f"forked {child}")
    sys.stdin.read()


def count_under_the_lock(path: str, counter: str, times: str) -> None:
    """At a line on stdin, ``times`` times: under the lock file ``path``, read the number in
    ``counter`` and write it back plus one, with no lock of its own."""
    with _lock.held(Path(path), timeout=30):  # the first acquisition: alone
        pass
    say("ready")
    sys.stdin.readline()
    for _ in range(int(times)):
        with _lock.held(Path(path), timeout=60):
            with open(counter) as file:
                number = int(file.read())
            with open(counter, "w") as file:
                file.write(str(number + 1))


def fork_while_queued(path: str) -> None:
    """Hold the lock file ``path`` in the queue, fork a child that lingers and does not exec,
    then let go and say "released"; the child is killed when stdin closes."""
    import warnings

    warnings.simplefilter("ignore", DeprecationWarning)
    with _lock.held(Path(path), timeout=30):  # the first acquisition: alone
        pass
    with _lock.held(Path(path), timeout=30):
        child = os.fork()
        if child == 0:
            null = os.open(os.devnull, os.O_RDWR)
            for stream in (0, 1, 2):  # the test waits for the end of the parent's
                os.dup2(null, stream)
            signal.pause()
            os._exit(0)
    say("released")
    sys.stdin.read()
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)


MODES: dict[str, Callable[..., object]] = {
    "queue-for-the-lock": queue_for_the_lock,
    "count-under-the-lock": count_under_the_lock,
    "fork-while-queued": fork_while_queued,
    "fork-in-the-queue": fork_in_the_queue,
    "count": count,
    "wait-for-signal": wait_for_signal,
    "with-app-handler": with_app_handler,
    "signal-on-another-thread": signal_on_another_thread,
    "never-closed": never_closed,
    "ctrl-c-at-exit": ctrl_c_at_exit,
    "left-open": left_open,
    "signal-after-loop-stopped": signal_after_loop_stopped,
    "fork-with-pending": fork_with_pending,
    "kill-mid-flush": kill_mid_flush,
    "fork-while-locked": fork_while_locked,
    "cancel-everything-mid-flush": cancel_everything_mid_flush,
    "close-gives-up": close_gives_up,
    "stuck-on-signal": stuck_on_signal,
    "stuck-then-another-signal": stuck_then_another_signal,
    "count-while-the-signal-flushes": count_while_the_signal_flushes,
    "count-through-the-signal": count_through_the_signal,
    "flush-through-the-signal": flush_through_the_signal,
    "fork-while-waiting-for-the-lock": fork_while_waiting_for_the_lock,
    "handler-saved-and-put-back": handler_saved_and_put_back,
    "like-uvicorn": like_uvicorn,
    "signal-as-the-loop-stops": signal_as_the_loop_stops,
    "ctrl-c-while-asleep": ctrl_c_while_asleep,
    "count-url": count_url,
    "flush-and-leave": flush_and_leave,
}

if __name__ == "__main__":
    # A shell that starts a job in the background starts it with SIGINT ignored, and nohup
    # starts it with SIGHUP ignored; Python leaves both so. The signal tests need a worker
    # that takes them as a program run by hand in a terminal does.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
    mode, *arguments = sys.argv[1:]
    result = MODES[mode](*arguments)
    if asyncio.iscoroutine(result):
        asyncio.run(result)
