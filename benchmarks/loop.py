"""Row 4: the event loop's responsiveness while a store flushes back to back.

``python benchmarks/loop.py [--quick]`` prints the rows; ``run.py`` shows them as its row 4.

Measured on an event loop of its own (in a thread of its own, when run.py runs it), next to
controls measured on the same loop in turns of 50 ms (80 rounds of each), so that what other
processes do to the machine (a stall, a burst of load) falls on the store and the controls
alike:

- **A readiness probe.** Another process writes its ``CLOCK_MONOTONIC`` reading (system-wide
  on Linux, unlike ``perf_counter``) into a pipe every millisecond; the loop watches the pipe
  with ``loop.add_reader``, and for each message the probe takes the time its callback ran
  minus the time written: from "readable" to "callback ran". A loop asleep in ``epoll_wait``
  wakes for the pipe at once, so unlike the 1 ms ticker that row 4 used to be (which measured
  epoll's timeout rounding) this sees only what holds the loop up: callbacks queued ahead of
  the probe's, the GIL held by another thread when the loop wakes, and the CPU it waits for.
  The loop's selector (a public argument of SelectorEventLoop) notes when each poll returned,
  which splits off the time to wake, with the GIL, of the messages written while it slept.
  The figure compared is the p99 of blocks of 10 rounds (some 500 messages), as the median
  of the blocks' differences: a stall of the machine spoils one block, where it would set the
  p99 of all rounds pooled (also shown).
- **The loop's own steps.** Every callback the loop runs, timed (wall clock, so a wait for the
  GIL inside a step counts). asyncio has no public hook around a step: ``Handle._run`` and
  ``_run_once`` are private, and debug mode's ``slow_callback_duration`` only logs, and slows
  every ``call_soon``. So ``StepTimedLoop`` wraps each callback where it is scheduled, through
  the loop's public methods (see there). A step is set apart when the OS preempted its thread,
  when its thread was off the CPU with no switch it knew of (the VM's CPU taken away), or when
  the garbage collector ran in it; the probe's own callback has the probe's row.
- **CPU per flush.** The loop thread's (``time.thread_time`` over the whole run, divided by
  the flushes; the probe's own callbacks are in it, and in the controls'), and the store's
  thread's: its thread CPU clock (``time.pthread_getcpuclockid`` of the thread the backend's
  ``commit`` runs on) over the run, divided by the flushes, with the user-mode part from
  ``getrusage(RUSAGE_THREAD)`` taken around each ``commit``: user time is the thread running
  Python (and C under the GIL), so it stands for the GIL held; the file's system calls release
  the GIL and are system time.

Sizes: no tool names; the cap (``DEFAULT_MAX_TOOLS`` tool names); and the cap of each kind
(as many tools, prompts and clients), the largest session the library accepts in names. Each
flush has a pending change: one error, and at the sizes with names a call of one of them.
The last size is the cap of each kind again, with a rival: another process with a store on
the same file, flushing back to back during this size's turns (told on its stdin to go before
each and to stop after, which it does between two of its flushes: stopped by a signal, it
could hold the lock), each flush with a call of a tool, a prompt and a client pending. So
nearly every flush of ours reads a file the rival wrote, not the one we wrote.

The controls: the same loop hopping to a thread of its own (as the store has one), each hop
lasting at least the mean flush it is compared with (so that both wake the loop at the same
pace), with no store, no lock and no JSON. The first writes and fsyncs a small file (the
target's control); the second writes the session file's own bytes as the store does (temp
file, fsync, rename, fsync the directory): the I/O of a flush, without the store.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import gc
import os
import selectors
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from resource import RUSAGE_THREAD, getrusage
from typing import Any, NamedTuple

from aiosessionstore import AsyncSessionStore, FileBackend
from aiosessionstore._change import Change
from aiosessionstore._names import DEFAULT_MAX_TOOLS
from aiosessionstore._session import Record

#: At most this much more probe p99 than the control's, at every size.
PROBE_MARGIN = 0.0002
#: No step of the loop longer than this, at any size.
LONGEST_STEP = 0.001
#: The probe writes this often (ns).
PROBE_PERIOD = 1_000_000
#: Each run of flushes, and of control writes, lasts this long, and they take turns this
#: many times: short turns, so that what other processes do to the machine (a stall, a
#: burst of load) falls on the store and on the control alike.
SECONDS = 0.05
ROUNDS = 80
QUICK_ROUNDS = 6
#: The p99s compared are those of blocks of this many rounds (some 500 probes each), and
#: the median of their differences is the figure: a stall of the machine spoils one block,
#: where it would set the p99 of all rounds pooled.
BLOCK = 10

PROBE = """
import os, struct, sys, time
fd, period = int(sys.argv[1]), int(sys.argv[2])
pack, clock = struct.Struct("=q").pack, time.monotonic_ns
due = clock()
while True:
    due += period
    wait = due - clock()
    if wait > 0:
        time.sleep(wait / 1e9)
    else:
        due -= wait  # late: go on at the pace from now, with no burst to catch up
    try:
        os.write(fd, pack(clock()))
    except OSError:  # the reader closed the pipe: the benchmark is over
        break
"""

_STAMP = struct.Struct("=q")


class Step(NamedTuple):
    """One callback the loop ran: its wall time and its thread's CPU time; whether its thread
    blocked during it (a voluntary context switch: waiting for the GIL, say); whether the OS
    preempted it (an involuntary one: on a shared machine, mostly other processes' doing);
    and whether the garbage collector ran in it (triggered by whatever allocated last, in the
    whole process)."""

    wall: float
    cpu: float
    waited: bool
    preempted: bool
    collected: bool

    @property
    def stalled(self) -> bool:
        """Off the CPU for over half a millisecond with no switch its thread knew of: the
        virtual machine's CPU taken away, say (the host's steal)."""
        return not self.waited and not self.preempted and self.wall - self.cpu > 0.0005

    @property
    def counted(self) -> bool:
        """Whether the step is the loop's own: not preempted, stalled or collecting."""
        return not self.preempted and not self.collected and not self.stalled


class Line(NamedTuple):
    """A row of run.py's table."""

    number: str
    measure: str
    result: str
    ratio: float | None = None
    target: str = ""
    met: bool | None = None


# -- the loop's steps --------------------------------------------------------------------


class TimedSelector(selectors.DefaultSelector):
    """The loop's selector (a public argument of SelectorEventLoop), noting when its last
    poll began and when it returned, with the GIL taken back (ns)."""

    began = returned = 0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        self.began = time.monotonic_ns()
        try:
            return super().select(timeout)
        finally:
            self.returned = time.monotonic_ns()


class StepTimedLoop(asyncio.SelectorEventLoop):
    """A selector event loop that times every callback it runs, while ``steps`` is a list.

    Each callback is wrapped where it is scheduled, through the loop's public methods, since
    asyncio has no public hook around the running of one (the old row patched the private
    ``Handle._run``): ``call_soon`` (task steps, future callbacks), ``call_soon_threadsafe``
    (wake-ups from other threads), ``call_at`` (timers; ``call_later`` calls it) and
    ``add_reader``/``add_writer``. The C task and future call ``loop.call_soon`` by name, so
    they are covered. Not covered: the readers that the loop registers through its private
    ``_add_reader``, here only its self-pipe, whose callback reads a few bytes. A step that
    ends the run being timed (the benchmark's own work between runs) is not counted.
    """

    def __init__(self) -> None:
        self.selector = TimedSelector()
        super().__init__(self.selector)
        self.steps: list[Step] | None = None
        #: Callbacks whose steps are not counted: the probe's, which has a row of its own.
        self.untimed: set[Callable[..., object]] = set()
        #: Garbage collections run on the loop's thread, while watched.
        self.collections = 0
        self._thread = 0

    def _step(self, callback: Callable[..., object], *args: Any) -> None:
        steps = self.steps
        if steps is None or callback in self.untimed:
            callback(*args)
            return
        before = getrusage(RUSAGE_THREAD)
        collections = self.collections
        cpu = time.thread_time()
        start = time.perf_counter()
        try:
            callback(*args)
        finally:
            wall = time.perf_counter() - start
            cpu = time.thread_time() - cpu
            after = getrusage(RUSAGE_THREAD)
            waited = after.ru_nvcsw != before.ru_nvcsw
            preempted = after.ru_nivcsw != before.ru_nivcsw
            if self.steps is steps:  # else the step ended the run: the benchmark's own work
                steps.append(Step(wall, cpu, waited, preempted, self.collections != collections))

    def _collecting(self, phase: str, info: dict[str, int]) -> None:
        """A gc callback: counts the collections that start on this loop's thread."""
        if phase == "start" and threading.get_ident() == self._thread:
            self.collections += 1

    def watch_collections(self) -> None:
        self._thread = threading.get_ident()
        gc.callbacks.append(self._collecting)

    def close(self) -> None:
        if self._collecting in gc.callbacks:
            gc.callbacks.remove(self._collecting)
        super().close()

    def call_soon(  # type: ignore[override]
        self,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        return super().call_soon(self._step, callback, *args, context=context)

    def call_soon_threadsafe(  # type: ignore[override]
        self,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        return super().call_soon_threadsafe(self._step, callback, *args, context=context)

    def call_at(  # type: ignore[override]
        self,
        when: float,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        return super().call_at(when, self._step, callback, *args, context=context)

    def add_reader(self, fd: Any, callback: Callable[..., object], *args: Any) -> None:  # type: ignore[override]
        super().add_reader(fd, self._step, callback, *args)

    def add_writer(self, fd: Any, callback: Callable[..., object], *args: Any) -> None:  # type: ignore[override]
        super().add_writer(fd, self._step, callback, *args)


def run_on_own_loop(main: Coroutine[Any, Any, Any]) -> Any:
    """``asyncio.run`` on a StepTimedLoop (asyncio.Runner's loop_factory needs 3.11)."""
    loop = StepTimedLoop()
    loop.watch_collections()
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()


# -- the readiness probe -----------------------------------------------------------------


class Probe:
    """The probe process and the loop's reader of its pipe; ``delays`` collects (ns), and
    ``wakes`` the part of each delay until the loop was back from its poll with the GIL,
    for the messages written while it was asleep in the poll."""

    def __init__(self, selector: TimedSelector) -> None:
        self.delays: list[int] | None = None
        self.wakes: list[int] = []
        self._selector = selector
        self.callbacks = 0
        self._rest = b""
        self._fd, write_end = os.pipe()
        os.set_blocking(self._fd, False)
        self._process = subprocess.Popen(
            [sys.executable, "-c", PROBE, str(write_end), str(PROBE_PERIOD)], pass_fds=(write_end,)
        )
        os.close(write_end)

    def watch(self, loop: StepTimedLoop) -> None:
        loop.untimed.add(self._readable)
        loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        now = time.monotonic_ns()
        try:
            data = self._rest + os.read(self._fd, 1 << 16)
        except BlockingIOError:
            return
        whole = len(data) - len(data) % _STAMP.size
        self._rest = data[whole:]
        delays = self.delays
        if delays is not None:
            self.callbacks += 1
            stamps = [stamp for (stamp,) in _STAMP.iter_unpack(data[:whole])]
            delays.extend(now - stamp for stamp in stamps)
            began, returned = self._selector.began, self._selector.returned
            self.wakes.extend(returned - stamp for stamp in stamps if began <= stamp <= returned)

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.remove_reader(self._fd)
        os.close(self._fd)  # the probe's next write fails, and it ends
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


# -- CPU time ---------------------------------------------------------------------------


class TimedFile:
    """A FileBackend whose writes note their thread and user CPU time, on that thread."""

    def __init__(self, path: str) -> None:
        self.inner = FileBackend(path)
        self.path = self.inner.path
        self.description = self.inner.description
        self.thread: int | None = None
        self.user = 0.0

    def open(self, change: Change) -> Record:
        return self.inner.open(change)

    def commit(self, change: Change) -> Record:
        self.thread = threading.get_ident()
        before = getrusage(RUSAGE_THREAD).ru_utime
        try:
            return self.inner.commit(change)
        finally:
            self.user += getrusage(RUSAGE_THREAD).ru_utime - before

    def read(self) -> Record:
        return self.inner.read()

    def peek(self) -> Record:
        return self.inner.peek()

    def remove(self) -> bool:
        return self.inner.remove()

    def close(self) -> None:
        self.inner.close()


def thread_cpu(thread: int | None) -> float:
    """The CPU time of the thread with ``threading`` ident ``thread`` (Linux, macOS)."""
    if thread is None:
        return 0.0
    return time.clock_gettime(time.pthread_getcpuclockid(thread))


# -- one run: flushing, or the control -------------------------------------------------


@dataclass
class Run:
    """What one run of flushes (or control writes) saw: summed over the rounds."""

    flushes: int = 0
    seconds: float = 0.0
    delays: list[int] = field(default_factory=list)
    wakes: list[int] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    #: The probe's p99 in each round (ns).
    #: Where each round's delays start in ``delays``.
    rounds: list[int] = field(default_factory=list)
    probe_callbacks: int = 0
    loop_cpu: float = 0.0
    worker_cpu: float = 0.0
    worker_user: float = 0.0

    def per_flush(self, value: float) -> float:
        return value / max(self.flushes, 1)


class Timing:
    """Starts and stops the collection of one run's figures on the current loop."""

    def __init__(self, loop: StepTimedLoop, probe: Probe, run: Run) -> None:
        self._loop, self._probe, self._run = loop, probe, run

    def __enter__(self) -> None:
        self._loop.steps, self._probe.delays = self._run.steps, self._run.delays
        self._probe.wakes = self._run.wakes
        self._probe.callbacks = 0
        self._first = len(self._run.delays)
        self._start = time.perf_counter()
        self._cpu = time.thread_time()

    def __exit__(self, *exc: object) -> None:
        self._run.loop_cpu += time.thread_time() - self._cpu
        self._run.seconds += time.perf_counter() - self._start
        self._loop.steps = self._probe.delays = None
        self._probe.wakes = []
        self._run.probe_callbacks += self._probe.callbacks
        self._run.rounds.append(self._first)


@dataclass
class Size:
    label: str
    names: int
    kinds: int
    store: AsyncSessionStore
    backend: TimedFile
    tools: list[str]
    flushing: Run = field(default_factory=Run)
    control: Run = field(default_factory=Run)
    #: The second control: the session file's own bytes, written as the store writes them.
    same_bytes: Run = field(default_factory=Run)
    #: Another process flushing into the same file during this size's turns, if any.
    rival: subprocess.Popen[bytes] | None = None
    rival_flushes: int = 0


def tool_name(number: int) -> str:
    return f"tool_{number:04d}_with_a_name_of_a_typical_length"


async def seeded(directory: str, label: str, names: int, kinds: int) -> Size:
    """An open store whose session holds ``names`` tool names (and as many prompts and
    clients if ``kinds`` is 3)."""
    backend = TimedFile(os.path.join(directory, "session.json"))
    store = AsyncSessionStore(backend=backend, flush_interval=3600, handle_signals=False)
    await store.open()
    for number in range(names):
        client = f"client-{number:04d}" if kinds > 1 else None
        async with store.tool_call(tool_name(number), client=client):
            pass
        if kinds > 1:
            async with store.prompt_call(tool_name(number)):
                pass
    await store.flush()
    assert len(store.session.tools) == names
    return Size(label, names, kinds, store, backend, [tool_name(n) for n in range(names)])


async def flushing(size: Size, seconds: float, timing: Timing) -> None:
    """Flush back to back for ``seconds``, each flush with a change pending."""
    store, tools, run = size.store, size.tools, size.flushing
    await store.increment_errors()
    await store.flush()  # the worker is running and its thread known
    worker, user = thread_cpu(size.backend.thread), size.backend.user
    flushes = 0
    async with rivalling(size):
        with timing:
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                await store.increment_errors()
                if tools:
                    async with store.tool_call(tools[flushes % len(tools)]):
                        pass
                await store.flush()
                flushes += 1
    run.flushes += flushes
    run.worker_cpu += thread_cpu(size.backend.thread) - worker
    run.worker_user += size.backend.user - user


RIVAL = """
import asyncio, sys
from aiosessionstore import AsyncSessionStore

async def main(path, names):
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    async with AsyncSessionStore(path, flush_interval=3600, handle_signals=False) as store:
        print("ready", flush=True)
        number = 0
        while await commands.readline() == b"go\\n":  # until stdin closes
            stop = asyncio.ensure_future(commands.readline())
            while not stop.done():
                name = f"tool_{number % names:04d}_with_a_name_of_a_typical_length"
                async with store.tool_call(name, client=f"client-{number % names:04d}"):
                    pass
                async with store.prompt_call(name):
                    pass
                await store.flush()
                number += 1
            print(number, flush=True)  # its flushes so far

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def start_rival(path: str, names: int) -> subprocess.Popen[bytes]:
    """Another process with a store on ``path``, flushing only while told to (see
    Size.rival): between two flushes, never inside one, so it never holds the lock while
    ours waits for it (a stopped process in the lock's queue would hold up every other)."""
    rival = subprocess.Popen(
        [sys.executable, "-c", RIVAL, path, str(names)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert rival.stdout is not None
    if rival.stdout.readline() != b"ready\n":
        raise RuntimeError("the rival process did not start")
    return rival


@contextlib.asynccontextmanager
async def rivalling(size: Size) -> AsyncIterator[None]:
    """The size's rival, if any, flushing while the block runs; stopped after it, once its
    flush under way is done."""
    rival = size.rival
    if rival is None:
        yield
        return
    assert rival.stdin is not None
    assert rival.stdout is not None
    rival.stdin.write(b"go\n")
    rival.stdin.flush()
    try:
        yield
    finally:
        rival.stdin.write(b"stop\n")
        rival.stdin.flush()
        stopped = await asyncio.to_thread(rival.stdout.readline)
        if not stopped.strip().isdigit():
            raise RuntimeError("the rival process did not stop")
        size.rival_flushes = int(stopped)


def stop_rival(rival: subprocess.Popen[bytes]) -> None:
    """Ends the rival: its stdin closed, its store closes and it exits."""
    assert rival.stdin is not None
    rival.stdin.close()
    if rival.wait() != 0:
        raise RuntimeError(f"the rival process exited with status {rival.returncode}")


class ControlThread:
    """The control's thread, and what it costs: it writes and fsyncs a small file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="control")
        self.thread: int | None = None
        self.user = 0.0

    def write(self, lasting: float, data: bytes | None = None) -> None:
        """Write and fsync a small file; then idle (GIL released) until ``lasting`` has passed.

        With ``data``: write it as the store writes a session instead, to a fresh temp file,
        fsynced, renamed over the file, and the directory fsynced, with no store, no lock,
        no read and no JSON: the I/O of a flush and nothing else.
        """
        start = time.perf_counter()
        self.thread = threading.get_ident()
        before = getrusage(RUSAGE_THREAD).ru_utime
        temp = self.path if data is None else self.path + ".tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b'{"stats": {}}' if data is None else data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if data is not None:
            os.replace(temp, self.path)
            directory = os.open(os.path.dirname(self.path), os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        self.user += getrusage(RUSAGE_THREAD).ru_utime - before
        time.sleep(max(0.0, lasting - (time.perf_counter() - start)))


async def control(
    run: Run,
    pace: float,
    seconds: float,
    timing: Timing,
    thread: ControlThread,
    data: bytes | None = None,
) -> None:
    """Hops to the control's thread back to back for ``seconds``, each lasting ``pace``."""
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(thread.executor, thread.write, 0.0, data)
    worker, user = thread_cpu(thread.thread), thread.user
    writes = 0
    with timing:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            await loop.run_in_executor(thread.executor, thread.write, pace, data)
            writes += 1
    run.flushes += writes
    run.worker_cpu += thread_cpu(thread.thread) - worker
    run.worker_user += thread.user - user


# -- the rows --------------------------------------------------------------------------


def percentile(values: list[Any], fraction: float) -> Any:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def spread(run: Run) -> str:
    """The probe's p50, p99 and max; and for the messages written while the loop slept in
    its poll, the p99 until it was back from the poll with the GIL."""
    delays = run.delays
    p50, p99 = percentile(delays, 0.5), percentile(delays, 0.99)
    asleep = len(run.wakes) / max(len(delays), 1)
    return (
        f"{p50 / 1e6:.3f}, {p99 / 1e6:.3f}, {max(delays) / 1e6:.3f} ms ({asleep:.0%} written "
        f"while the loop slept: p99 {percentile(run.wakes, 0.99) / 1e6:.3f} ms to wake)"
    )


def steps_of(run: Run) -> str:
    """p99 and longest of the steps that were the loop's own (see Step.counted); the longest
    of each of the others."""
    kept = [step.wall for step in run.steps if step.counted]
    text = f"{percentile(kept, 0.99) * 1e6:.0f} µs, {max(kept) * 1e6:.0f} µs"
    for name, picked in (
        ("preempted", [step.wall for step in run.steps if step.preempted]),
        ("stalled", [step.wall for step in run.steps if step.stalled]),
        ("collecting garbage", [step.wall for step in run.steps if step.collected]),
    ):
        if picked:
            text += f"; {len(picked)} {name}, up to {max(picked) * 1e3:.1f} ms"
    return text


def block_p99s(run: Run) -> list[int]:
    """The probe's p99 in each block of BLOCK consecutive rounds (ns)."""
    starts = run.rounds[::BLOCK]
    ends = [*starts[1:], len(run.delays)]
    return [
        percentile(run.delays[start:end], 0.99) for start, end in zip(starts, ends, strict=True)
    ]


def over_by_blocks(ours: Run, theirs: Run) -> float:
    """The median over the blocks of rounds of ours' p99 minus theirs' (s)."""
    pairs = zip(block_p99s(ours), block_p99s(theirs), strict=True)
    return float(statistics.median(a - b for a, b in pairs)) / 1e9


def longest_step(run: Run) -> float:
    return max(step.wall for step in run.steps if step.counted)


def rivals(size: Size) -> str:
    return f"; the other's: {size.rival_flushes:,}" if size.rival else ""


def lines_of(size: Size) -> list[Line]:
    ours, theirs, same = size.flushing, size.control, size.same_bytes
    over = (percentile(ours.delays, 0.99) - percentile(theirs.delays, 0.99)) / 1e9
    blocks = len(block_p99s(ours))
    robust = over_by_blocks(ours, theirs)
    over_same = over_by_blocks(ours, same)
    longest = longest_step(ours)
    waited = [step.wall for step in ours.steps if step.waited and step.counted]
    callbacks = len(ours.steps) / max(ours.flushes, 1)
    control_callbacks = len(theirs.steps) / max(theirs.flushes, 1)

    def cpu(run: Run) -> str:
        return (
            f"loop {run.per_flush(run.loop_cpu) * 1e6:.0f} µs, "
            f"thread {run.per_flush(run.worker_cpu) * 1e6:.0f} µs "
            f"(user {run.per_flush(run.worker_user) * 1e6:.0f} µs)"
        )

    return [
        Line(
            "4",
            f"readiness probe while flushing back to back, {size.label} "
            f"({ours.flushes:,} flushes{rivals(size)}): p50, p99, max",
            f"{spread(ours)}; p99 over the control: {robust * 1e3:+.3f} ms (median over "
            f"{blocks} blocks of {BLOCK} rounds; all rounds pooled: {over * 1e3:+.3f} ms)",
            None,
            *(
                ("(the rival's CPU is not in the control: no target)", None)
                if size.rival
                else ("p99 <= control + 0.2 ms", robust <= PROBE_MARGIN)
            ),
        ),
        Line(
            "4",
            f"the same during bare fsync-ed writes at that pace, no store "
            f"({theirs.flushes:,} writes)",
            spread(theirs),
            None,
            "(control)",
        ),
        Line(
            "4",
            f"the same while writing the session's own bytes at that pace as a store does "
            f"(temp file, fsync, rename, fsync the directory), no store ({same.flushes:,} "
            "writes)",
            f"{spread(same)}; flushing: p99 {over_same * 1e3:+.3f} ms over this (median over "
            "the blocks)",
            None,
            "(the I/O of a flush, without the store)",
        ),
        Line(
            "4",
            f"event-loop steps while flushing, {size.label} ({len(ours.steps):,}): "
            "p99, longest (wall clock, GIL waits included)",
            f"{steps_of(ours)}; {len(waited)} blocked, up to "
            f"{max(waited, default=0.0) * 1e6:.0f} µs; control: {steps_of(theirs)}",
            None,
            "longest <= 1 ms (but those preempted, stalled or collecting garbage)",
            longest <= LONGEST_STEP,
        ),
        Line(
            "4",
            f"CPU per flush, {size.label}: the loop's ({callbacks:.1f} callbacks), "
            "the store's thread's (user: GIL held)",
            f"{cpu(ours)}; control per write: {cpu(theirs)} ({control_callbacks:.1f} callbacks); "
            f"the session's bytes per write: {cpu(same)}",
            None,
            "(the probe's callbacks are in both)",
        ),
    ]


async def responsiveness(
    scratch: str, seconds: float, rounds: int, verbose: bool = False
) -> list[Line]:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, StepTimedLoop)
    sizes = [
        await seeded(os.path.join(scratch, "0"), "0 names", 0, 1),
        await seeded(
            os.path.join(scratch, "cap"), f"{DEFAULT_MAX_TOOLS:,} tools", DEFAULT_MAX_TOOLS, 1
        ),
        await seeded(
            os.path.join(scratch, "cap3"),
            f"{DEFAULT_MAX_TOOLS:,} each of tools, prompts, clients",
            DEFAULT_MAX_TOOLS,
            3,
        ),
        await seeded(
            os.path.join(scratch, "rival"),
            f"{DEFAULT_MAX_TOOLS:,} each, another process flushing too",
            DEFAULT_MAX_TOOLS,
            3,
        ),
    ]
    sizes[-1].rival = start_rival(str(sizes[-1].backend.path), DEFAULT_MAX_TOOLS)
    thread = ControlThread(os.path.join(scratch, "control", "control.json"))
    os.makedirs(os.path.dirname(thread.path))
    probe = Probe(loop.selector)
    probe.watch(loop)
    try:
        await asyncio.sleep(0.1)  # the probe process started and writing
        for _ in range(rounds):  # interleaved: drift on a shared machine hits every run alike
            for size in sizes:
                flushes, spent = size.flushing.flushes, size.flushing.seconds
                await flushing(size, seconds, Timing(loop, probe, size.flushing))
                pace = (size.flushing.seconds - spent) / max(size.flushing.flushes - flushes, 1)
                await control(
                    size.control, pace, seconds, Timing(loop, probe, size.control), thread
                )
                data = await asyncio.to_thread(size.backend.path.read_bytes)
                timing = Timing(loop, probe, size.same_bytes)
                await control(size.same_bytes, pace, seconds, timing, thread, data)
    finally:
        probe.close(loop)
        thread.executor.shutdown()
        for size in sizes:
            if size.rival is not None:
                stop_rival(size.rival)
            await size.store.aclose()
    if verbose:
        for size in sizes:
            pairs = zip(block_p99s(size.flushing), block_p99s(size.control), strict=True)
            print(f"probe p99 by block of {BLOCK} rounds, {size.label}, flushing/control (ms): "
                  + ", ".join(f"{a / 1e6:.2f}/{b / 1e6:.2f}" for a, b in pairs))  # fmt: skip
    return [line for size in sizes for line in lines_of(size)]


def measure(scratch: str, seconds: float, rounds: int, verbose: bool = False) -> list[Line]:
    """Row 4's lines, measured on a StepTimedLoop of their own (call it from a thread if an
    event loop is running)."""
    result: list[Line] = run_on_own_loop(responsiveness(scratch, seconds, rounds, verbose))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes: a smoke test")
    parser.add_argument("--seconds", type=float, help="each run's length")
    parser.add_argument("--rounds", type=int)
    arguments = parser.parse_args()
    seconds = arguments.seconds or SECONDS
    rounds = arguments.rounds or (QUICK_ROUNDS if arguments.quick else ROUNDS)
    with tempfile.TemporaryDirectory() as scratch:
        lines = measure(scratch, seconds, rounds, verbose=True)
    for line in lines:
        met = "" if line.met is None else ("met" if line.met else "MISSED")
        print(f"{line.measure}\n    {line.result}  [{line.target}] {met}")


if __name__ == "__main__":
    main()
