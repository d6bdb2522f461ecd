"""Benchmarks for aiosessionstore: ``python benchmarks/run.py [--quick] [--output FILE]``.

Prints a table and writes it as Markdown (default: benchmarks/RESULTS.md). Every figure that
is compared is measured in the same run and reported as a ratio, since absolute times drift on
shared machines. Needs the ``bench`` extra (aiosqlite, diskcache) and, for the Node
comparison, ``node`` on PATH.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from math import ceil, log2
from pathlib import Path
from typing import Any

import aiofiles
import aiofiles.os
import loop as responsiveness

from aiosessionstore import AsyncSessionStore
from aiosessionstore._codec import decode, encode
from aiosessionstore._lock import held
from aiosessionstore._pending import Calls

HERE = Path(__file__).parent


#: A row of the table: loop.py makes row 4's, so it holds the one definition.
Row = responsiveness.Line


@dataclass
class Sizes:
    increments: int
    flushes: int
    alternative: int
    rounds: int


async def rate(count: int, run: Callable[[], Awaitable[None]]) -> float:
    start = time.perf_counter()
    await run()
    return count / (time.perf_counter() - start)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def store_at(directory: str, **options: object) -> AsyncSessionStore:
    return AsyncSessionStore(
        os.path.join(directory, "session.json"),
        handle_signals=False,
        **options,  # type: ignore[arg-type]
    )


# -- 1. the hot path ------------------------------------------------------------------------
# Each case is a time per call. The cases take turns in short slices (a few ms each, the order
# rotating), and each keeps its best slice: on a shared machine, a slice that nothing else
# interrupted is the one that measures the code, and drift hits every case alike. The targets
# are ratios of those times. The floors are what the card's design costs with nothing else in
# it; the counters are what a user would otherwise pick.

Timed = Callable[[int], Awaitable[None]]


async def noop() -> None:
    """An empty async def: what any ``await`` of a coroutine costs."""


def card_floor() -> Callable[[], Awaitable[None]]:
    """The card's own floor: one asyncio.Lock taken and released around a dict update."""
    lock = asyncio.Lock()
    data = {"toolCalls": 0}

    async def increment() -> None:
        await lock.acquire()
        data["toolCalls"] += 1
        lock.release()

    return increment


def old_bare_limit() -> Callable[[], Awaitable[None]]:
    """Issue 5's "bare limit": ``async with`` a lock, a dict update and ``time.time()``."""
    lock = asyncio.Lock()
    data = {"toolCalls": 0, "lastActiveAt": 0.0}

    async def increment() -> None:
        async with lock:
            data["toolCalls"] += 1
            data["lastActiveAt"] = time.time()

    return increment


def awaited(increment: Callable[[], Awaitable[None]]) -> Timed:
    async def run(count: int) -> None:
        for _ in range(count):
            await increment()

    return run


def called(increment: Callable[[], object]) -> Timed:
    """A synchronous counter called from a coroutine, as a handler would call it."""

    async def run(count: int) -> None:
        for _ in range(count):
            increment()

    return run


def interleaved(increment: Callable[[], Awaitable[None]], tasks: int) -> Timed:
    """``tasks`` tasks, each yielding to the loop after every increment, so that the tasks
    take turns between any two increments of one task: an uncontended ``acquire()`` never
    yields, so without the yield each task would run all its increments in one step."""

    async def one(count: int) -> None:
        for _ in range(count):
            await increment()
            await asyncio.sleep(0)

    async def run(count: int) -> None:
        await asyncio.gather(*(one(count // tasks) for _ in range(tasks)))

    return run


async def turns_taken(tasks: int, each: int) -> float:
    """The share of increments, under ``interleaved``, after which another task ran."""
    order: list[asyncio.Task[Any] | None] = []

    async def record() -> None:
        order.append(asyncio.current_task())

    await interleaved(record, tasks)(tasks * each)
    switches = sum(order[i] is not order[i - 1] for i in range(1, len(order)))
    return switches / (len(order) - 1)


def prometheus_inc() -> Callable[[], object] | None:
    """prometheus_client's ``Counter.inc``, in a registry of its own; None if not installed."""
    try:
        from prometheus_client import CollectorRegistry, Counter
    except ImportError:
        return None
    counter = Counter("tool_calls", "Tool calls.", registry=CollectorRegistry())
    inc: Callable[[], object] = counter.inc
    return inc


def opentelemetry_add() -> Callable[[], object] | None:
    """The OpenTelemetry SDK's ``counter.add(1)``, read by an in-memory reader that is never
    collected (no exporter); None if not installed."""
    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    except ImportError:
        return None
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    add: Callable[[int], object] = provider.get_meter("benchmark").create_counter("tool_calls").add
    return lambda: add(1)


def node_rate(count: int) -> float | None:
    node = shutil.which("node")
    if node is None:
        return None
    done = subprocess.run(
        [node, str(HERE / "seed_hot_path.js"), str(count)], capture_output=True, text=True
    )
    return float(done.stdout) if done.returncode == 0 else None


async def best_times(cases: dict[str, tuple[Timed, int]], slices: int) -> dict[str, float]:
    """Each case's best time per call over ``slices`` slices of its size, the cases taking
    turns slice by slice."""
    best = dict.fromkeys(cases, float("inf"))
    names = list(cases)
    for number in range(slices):
        shift = number % len(names)
        for name in names[shift:] + names[:shift]:
            run, count = cases[name]
            start = time.perf_counter()
            await run(count)
            best[name] = min(best[name], (time.perf_counter() - start) / count)
    return best


def per_call(seconds: float) -> str:
    return f"{seconds * 1e9:,.0f} ns ({1 / seconds:,.0f}/s)"


class EmptyTimer:
    """A tool call's shape with nothing counted: a new object, entered and left, reading
    ``perf_counter`` at each end, as ``tool_call`` does."""

    __slots__ = ("elapsed", "started")

    async def __aenter__(self) -> EmptyTimer:
        self.started = time.perf_counter()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.elapsed = time.perf_counter() - self.started


async def empty_timers(count: int) -> None:
    """``async with`` a new EmptyTimer, in the timed loop itself, as ``tool_calls`` enters."""
    for _ in range(count):
        async with EmptyTimer():
            pass


class Tally:
    """Counts as tool_call keeps them: the four counters, per-name ``Calls``, the last
    activity."""

    __slots__ = ("active_at", "counts", "tools")

    def __init__(self) -> None:
        self.counts = [0, 0, 0, 0]
        self.tools: dict[str, Calls] = {}
        self.active_at = 0.0


TALLY = Tally()


class InlineTally:
    """What ``tool_call`` counts, written out in the statement's own object: no store, no
    name check, no lock, no open check, no callback and no function call but the clocks'.
    The least that ``async with`` and that counting cost together: a floor, not a design."""

    __slots__ = ("calls", "name", "started")

    def __init__(self, name: str) -> None:
        self.name = name

    async def __aenter__(self) -> InlineTally:
        tally = TALLY
        tally.counts[0] += 1
        calls = tally.tools.get(self.name)
        if calls is None:
            calls = tally.tools[self.name] = Calls()
        calls.calls += 1
        self.calls = calls
        tally.active_at = time.time()
        self.started = time.perf_counter()
        return self

    async def __aexit__(self, exc_type: object, exc: object, traceback: object) -> None:
        elapsed = (time.perf_counter() - self.started) * 1000
        calls = self.calls
        if exc is not None:
            TALLY.counts[2] += 1
            calls.errors += 1
        calls.total_ms += elapsed
        if elapsed > calls.max_ms:
            calls.max_ms = elapsed
        microseconds = elapsed * 1000
        index = ceil(4 * log2(microseconds)) if microseconds > 1 else 0
        latency = calls.latency
        latency[index] = latency.get(index, 0) + 1
        TALLY.active_at = time.time()


async def inline_tallies(count: int) -> None:
    for _ in range(count):
        async with InlineTally("search"):
            pass


class EndTally:
    """The floor of a leaner design than ours: the call counted once, when it ends (a flush
    during a call would not see it), with three clock reads, not four: what such a change of
    design could reach at best. Written out as InlineTally is, its counting repeated rather
    than shared, since a call to a shared helper would be timed in both floors."""

    __slots__ = ("name", "started")

    def __init__(self, name: str) -> None:
        self.name = name

    async def __aenter__(self) -> EndTally:
        self.started = time.perf_counter()
        return self

    async def __aexit__(self, exc_type: object, exc: object, traceback: object) -> None:
        elapsed = (time.perf_counter() - self.started) * 1000
        tally = TALLY
        tally.counts[0] += 1
        calls = tally.tools.get(self.name)
        if calls is None:
            calls = tally.tools[self.name] = Calls()
        calls.calls += 1
        if exc is not None:
            tally.counts[2] += 1
            calls.errors += 1
        calls.total_ms += elapsed
        if elapsed > calls.max_ms:
            calls.max_ms = elapsed
        microseconds = elapsed * 1000
        index = ceil(4 * log2(microseconds)) if microseconds > 1 else 0
        latency = calls.latency
        latency[index] = latency.get(index, 0) + 1
        tally.active_at = time.time()


async def end_tallies(count: int) -> None:
    for _ in range(count):
        async with EndTally("search"):
            pass


async def hot_path(sizes: Sizes, rows: list[Row], scratch: str) -> float:
    tasks, slices = 1000, sizes.rounds * max(1, sizes.increments // 40_000)
    async with store_at(scratch, flush_interval=3600.0) as store:  # no flush in the way

        async def tool_calls(count: int) -> None:
            """The statement in the timed loop itself, as ``awaited`` awaits an increment: a
            coroutine around it would be timed too, and a handler has none."""
            tool_call = store.tool_call
            for _ in range(count):
                async with tool_call("search"):
                    pass

        cases: dict[str, tuple[Timed, int]] = {  # (what, calls in a slice)
            "noop": (awaited(noop), 10_000),
            "floor": (awaited(card_floor()), 10_000),
            "old": (awaited(old_bare_limit()), 10_000),
            "ours": (awaited(store.increment_tool_calls), 10_000),
            "floor tasks": (interleaved(card_floor(), tasks), 20 * tasks),
            "ours tasks": (interleaved(store.increment_tool_calls, tasks), 20 * tasks),
            "tool_call": (tool_calls, 5_000),
            "empty timer": (empty_timers, 5_000),
            "inline": (inline_tallies, 5_000),
            "counted at the end": (end_tallies, 5_000),
        }
        counters = {"prometheus": prometheus_inc(), "opentelemetry": opentelemetry_add()}
        for name, counter in counters.items():
            if counter is not None:
                cases[name] = (called(counter), 10_000 if name == "prometheus" else 2_000)
        best = await best_times(cases, slices)
        turns = await turns_taken(tasks, 10)
    floor, ours, tool = best["floor"], best["ours"], best["tool_call"]
    empty = best["noop"]
    rows.append(Row("1", "await noop(): an empty async def", per_call(empty), empty / floor,
                    "(ratios: time per call / the card's floor)"))  # fmt: skip
    rows.append(Row("1", "the card's floor: await lock.acquire(); d[k] += 1; lock.release()",
                    per_call(floor), 1.0))  # fmt: skip
    old = best["old"]
    rows.append(Row("1", "issue 5's bare limit: async with lock, d[k] += 1, time.time()",
                    per_call(old), old / floor, "(no floor: not a target)"))  # fmt: skip
    labels = {
        "prometheus": "prometheus_client Counter.inc()",
        "opentelemetry": "OpenTelemetry SDK counter.add(1), in-memory reader",
    }
    for name, label in labels.items():
        if name in best:
            rows.append(Row("1", label, per_call(best[name]), best[name] / floor))
        else:
            rows.append(Row("1", label, "skipped: not installed"))
    rows.append(Row("1", "increment_tool_calls, 1 task", per_call(ours), ours / floor,
                    "<= 1.2x the card's floor", ours / floor <= 1.2))  # fmt: skip
    if "prometheus" in best:
        prometheus = best["prometheus"]
        rows.append(Row("1", "increment_tool_calls / prometheus_client Counter.inc()", "",
                        ours / prometheus, "<= 1.0x", ours <= prometheus))  # fmt: skip
    floor_tasks, ours_tasks = best["floor tasks"], best["ours tasks"]
    rows.append(Row("1", f"the card's floor, {tasks:,} tasks, each yielding after every "
                    f"increment (another task ran after {turns:.0%} of increments)",
                    per_call(floor_tasks), floor_tasks / floor))  # fmt: skip
    rows.append(Row("1", f"increment_tool_calls, the same {tasks:,} interleaved tasks",
                    per_call(ours_tasks), ours_tasks / floor_tasks,
                    "<= 1.2x the same-shaped floor", ours_tasks / floor_tasks <= 1.2))  # fmt: skip
    timer = best["empty timer"]
    rows.append(Row("1", "async with a new object, perf_counter() at each end: tool_call's "
                    "shape, nothing counted", per_call(timer), timer / floor,
                    f"({timer / ours:.2f}x an increment)"))  # fmt: skip
    inline = best["inline"]
    rows.append(Row("1", "the same, counting what tool_call counts, all of it written out in "
                    "that object (no store, no checks, no calls): its floor", per_call(inline),
                    inline / floor, f"({inline / ours:.2f}x an increment)"))  # fmt: skip
    at_end = best["counted at the end"]
    rows.append(Row("1", "the same, counted only when the call ends, with three clock reads: "
                    "the floor of a leaner design", per_call(at_end), at_end / floor,
                    f"({at_end / ours:.2f}x an increment)"))  # fmt: skip
    rows.append(Row("1", 'async with store.tool_call("search"): pass', per_call(tool),
                    tool / floor, f"<= 3.0x an increment: {tool / ours:.2f}x",
                    tool / ours <= 3.0))  # fmt: skip
    seed = node_rate(min(sizes.increments * 2, 2_000_000))
    if seed is not None:
        rows.append(Row("1", "a comparison of designs, not a floor: the TypeScript original's "
                        "in-memory update (a new session object per call) under Node",
                        per_call(1 / seed), 1 / seed / floor))  # fmt: skip
        rows.append(Row("1", "increment_tool_calls throughput / the original's under Node", "",
                        1 / (seed * ours), ">= 2.0x", seed * ours <= 0.5))  # fmt: skip
    else:
        rows.append(Row("1", "the TypeScript original under Node", "skipped: no node on PATH"))
    return 1 / ours


# -- 2, 3, 4. flushing: the increments, one flush, the event loop ---------------------------


async def flushing_back_to_back(
    store: AsyncSessionStore, stop: asyncio.Event, in_flight: list[bool] | None = None
) -> int:
    """Flush a pending error again and again until ``stop``; ``in_flight[0]`` says whether
    a flush is under way, for the latency sample of row 2."""
    flushes = 0
    while not stop.is_set():
        await store.increment_errors()  # something to write, so each flush writes
        if in_flight is not None:
            in_flight[0] = True
        await store.flush()
        if in_flight is not None:
            in_flight[0] = False
        flushes += 1
    return flushes


async def timed_increments(store: AsyncSessionStore, count: int) -> float:
    """Increments per second, yielding every 10 so that flushes run."""
    increment = store.increment_tool_calls
    clock = time.perf_counter
    start = clock()
    for number in range(count):
        await increment()
        if number % 10 == 0:
            await asyncio.sleep(0)
    return count / (clock() - start)


async def sampled_increments(
    store: AsyncSessionStore, count: int, in_flight: list[bool]
) -> list[float]:
    """The latency of each increment begun while a flush was under way, one per loop step:
    each flush overlaps tens of them, so that the p99 sees what a flush does to one."""
    latencies = []
    increment = store.increment_tool_calls
    clock = time.perf_counter
    for _ in range(count):
        flying = in_flight[0]
        before = clock()
        await increment()
        after = clock()
        if flying:
            latencies.append(after - before)
        await asyncio.sleep(0)
    return latencies


async def increments_while_flushing(sizes: Sizes, rows: list[Row], scratch: str) -> None:
    n = sizes.increments // 4
    quiet_rate = busy_rate = control_rate = 0.0
    quiet: list[float] = []
    busy: list[float] = []
    flushes = sampled_flushes = 0
    control_path = os.path.join(scratch, "control.json")
    always = [True]
    async with store_at(scratch) as store:
        for _ in range(sizes.rounds):  # interleaved, best of each, as in 1
            quiet_rate = max(quiet_rate, await timed_increments(store, n))
            quiet += await sampled_increments(store, n // 10, always)
            stop = asyncio.Event()
            flusher = asyncio.create_task(flushing_back_to_back(store, stop))
            busy_rate = max(busy_rate, await timed_increments(store, n))
            stop.set()
            flushes += await flusher
            stop, in_flight = asyncio.Event(), [False]
            flusher = asyncio.create_task(flushing_back_to_back(store, stop, in_flight))
            busy += await sampled_increments(store, n // 10, in_flight)
            stop.set()
            sampled_flushes += await flusher
            stop = asyncio.Event()
            writer = asyncio.create_task(writing_back_to_back(control_path, 0.0, stop))
            control_rate = max(control_rate, await timed_increments(store, n))
            stop.set()
            await writer
    rows.append(Row("2", f"increments while flushing back to back ({flushes} flushes)",
                    f"{busy_rate:,.0f}/s", busy_rate / quiet_rate, ">= 0.5x without flushing",
                    busy_rate / quiet_rate >= 0.5))  # fmt: skip
    rows.append(Row("2", "the same during bare fsync-ed writes back to back, with no store",
                    f"{control_rate:,.0f}/s", control_rate / quiet_rate,
                    "(control: what fsync alone costs the loop)"))  # fmt: skip
    quiet_p99, busy_p99 = percentile(quiet, 0.99), percentile(busy, 0.99)
    per_flush = len(busy) / max(sampled_flushes, 1)
    rows.append(Row("2", f"p99 latency of one increment begun during a flush ({len(busy):,} "
                    f"sampled, {per_flush:.0f} per flush)",
                    f"{busy_p99 * 1e6:.2f} µs (without flushing: {quiet_p99 * 1e6:.2f} µs)",
                    busy_p99 / quiet_p99, "<= 2.0x without flushing",
                    busy_p99 / quiet_p99 <= 2.0))  # fmt: skip


def plain_locked_merge(path: Path) -> None:
    """The synchronous baseline: the same locked read-merge-write with the same codec and the
    same fsyncs, but no thread, no event loop and no cache."""
    with held(path.with_name(path.name + ".lock"), 10):
        record = decode(path.read_bytes())
        stats = record.session.stats
        record = record.with_session(
            stats=dataclasses.replace(stats, tool_calls=stats.tool_calls + 1)
        )
        temp = path.with_name(path.name + ".plain.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, encode(record))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


async def flush_and_plain(store: AsyncSessionStore) -> tuple[float, float]:
    """One flush of a pending count, then the same merge done plainly: their times."""
    await store.increment_tool_calls()
    start = time.perf_counter()
    await store.flush()
    flushed = time.perf_counter()
    assert store.path is not None  # a file store
    plain_locked_merge(store.path)
    return flushed - start, time.perf_counter() - flushed


async def flush_latency(sizes: Sizes, rows: list[Row], scratch: str) -> None:
    ours, plain, hops = [], [], []
    nothing = aiofiles.os.wrap(lambda: None)
    async with store_at(scratch) as store:
        own_thread = store._writer._thread  # the thread a flush hops to
        for _ in range(sizes.flushes):
            flush_time, plain_time = await flush_and_plain(store)
            ours.append(flush_time)
            plain.append(plain_time)
            start = time.perf_counter()
            await nothing(executor=own_thread)
            hops.append(time.perf_counter() - start)
    median, plain_median = statistics.median(ours), statistics.median(plain)
    rows.append(Row("3", "flush: median, p99 (fsyncs, one thread hop, lock file)",
                    f"{median * 1e3:.2f} ms, {percentile(ours, 0.99) * 1e3:.2f} ms",
                    median / plain_median, "median <= 2.0x plain sync",
                    median / plain_median <= 2.0))  # fmt: skip
    rows.append(
        Row(
            "3",
            "plain synchronous locked read-merge-write, same codec: median, p99",
            f"{plain_median * 1e3:.2f} ms, {percentile(plain, 0.99) * 1e3:.2f} ms",
        )
    )
    rows.append(Row("3", "one hop to the store's own thread and back (a flush makes one): median",
                    f"{statistics.median(hops) * 1e6:.0f} µs"))  # fmt: skip


def fsynced_write(path: str, data: bytes, lasting: float = 0.0) -> None:
    """Write and fsync; then, if ``lasting`` is set, idle (GIL released) until it has passed."""
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    time.sleep(max(0.0, lasting - (time.perf_counter() - start)))


async def writing_back_to_back(path: str, lasting: float, stop: asyncio.Event) -> int:
    """The control: thread hops that write and fsync, with no store, lock, JSON or Python work
    to speak of, each lasting at least ``lasting`` seconds."""
    write = aiofiles.os.wrap(fsynced_write)
    writes = 0
    while not stop.is_set():
        await write(path, b'{"stats": {}}', lasting)
        writes += 1
    return writes


async def loop_lag(sizes: Sizes, rows: list[Row], scratch: str) -> None:
    """Row 4, from benchmarks/loop.py: a readiness probe, the loop's steps, and CPU per flush,
    at 0 names and at the cap, against bare fsync-ed writes. On a loop of its own (one that
    times its steps), in a thread of its own."""
    rounds = responsiveness.QUICK_ROUNDS if sizes.rounds < 5 else responsiveness.ROUNDS
    lines = await asyncio.to_thread(responsiveness.measure, scratch, responsiveness.SECONDS, rounds)
    rows.extend(lines)


# -- 5. open and close ----------------------------------------------------------------------


CAP = 1000  # the tool names a session keeps apart by default (max_tools)


def tool_name(number: int) -> str:
    return f"tool_{number:04d}_with_a_name_of_a_typical_length"


async def seed_names(directory: str, names: int) -> None:
    """A session file in ``directory`` holding ``names`` tools, each with stats."""
    async with store_at(directory) as store:
        for number in range(names):
            async with store.tool_call(tool_name(number)):
                pass


async def open_and_close(sizes: Sizes, rows: list[Row], scratch: str) -> None:
    for names in (0, CAP):
        new: list[float] = []
        existing: list[float] = []
        final: list[float] = []
        for number in range(max(5, sizes.rounds * 4)):
            directory = os.path.join(scratch, f"open-{names}-{number}")
            if names:  # "new" is then a new store on a file that has the names
                await seed_names(directory, names)
            for timings in (new, existing):
                store = store_at(directory)
                start = time.perf_counter()
                await store.__aenter__()
                timings.append(time.perf_counter() - start)
                await store.increment_tool_calls(5)
                start = time.perf_counter()
                await store.__aexit__(None, None, None)
                final.append(time.perf_counter() - start)
        first = "new file" if not names else "first"
        rows.append(Row("5", f"enter the block at {names:,} tool names: {first}, again (median)",
                        f"{statistics.median(new) * 1e3:.2f} ms, "
                        f"{statistics.median(existing) * 1e3:.2f} ms"))  # fmt: skip
        worst = max(final)
        rows.append(Row("5", f"leave the block with counts pending at {names:,} tool names: "
                        "median, worst",
                        f"{statistics.median(final) * 1e3:.2f} ms, {worst * 1e3:.2f} ms",
                        None, "far inside 2 s", worst < 0.2))  # fmt: skip


# -- 6. many processes ----------------------------------------------------------------------

WORKER = """
import asyncio, sys, time
from aiosessionstore import AsyncSessionStore
async def main(where, total, every):
    place = {"url": where} if "://" in where else {"path": where}
    async with AsyncSessionStore(**place, flush_interval=3600, handle_signals=False) as store:
        sys.stdout.write("ready\\n"); sys.stdout.flush(); sys.stdin.readline()
        for number in range(1, total + 1):
            await store.increment_tool_calls()
            if number % every == 0:
                await store.flush()
        sys.stdout.write(f"{time.monotonic()}\\n"); sys.stdout.flush()
asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"""


def many_processes(sizes: Sizes, rows: list[Row], scratch: str, url: str | None = None) -> float:
    """8 processes flushing one session; the flushes per second. With ``url``, on Redis."""
    path = os.path.join(tempfile.mkdtemp(dir=scratch), "session.json")
    processes, each, every = 8, 5000, 100
    where = path if url is None else url
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, where, str(each), str(every)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    for worker in workers:  # all imported and open: time only the counting
        assert worker.stdout is not None
        worker.stdout.readline()
    start = time.monotonic()  # system-wide on Linux: comparable with the workers' clocks
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    # Until the last flush of the last worker: the processes' ends are no part of flushing.
    assert all(worker.stdout is not None for worker in workers)
    ends = [float(worker.stdout.readline()) for worker in workers]  # type: ignore[union-attr]
    elapsed = max(ends) - start
    for worker in workers:
        worker.wait(timeout=300)
    if url is None:
        total = json.loads(Path(path).read_text())["stats"]["toolCalls"]
    else:
        total = stored_in_redis(url)["stats"]["toolCalls"]
    flushes = processes * each // every
    rows.append(
        Row(
            "6" if url is None else "9",
            f"{processes} processes x {each:,}, flushing every {every}"
            + ("" if url is None else ", on Redis"),
            f"{flushes / elapsed:,.0f} flushes/s, {total / elapsed:,.0f} increments/s",
            None,
            f"exactly {processes * each:,} stored",
            total == processes * each,
        )
    )
    return flushes / elapsed


# -- 9. Redis next to the file --------------------------------------------------------------


@contextlib.contextmanager
def redis_server(scratch: str) -> Iterator[str | None]:
    """A throwaway redis-server on a free port, its append-only file fsynced at every write
    as the session file is; None if there is no redis-server or no redis-py."""
    binary = shutil.which("redis-server")
    try:
        import redis  # noqa: F401
    except ImportError:
        binary = None
    if binary is None:
        yield None
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    directory = os.path.join(scratch, "redis")
    os.makedirs(directory)
    server = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", directory, "--save", "",
         "--appendonly", "yes", "--appendfsync", "always"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        for line in server.stdout:
            if "Ready to accept connections" in line:
                break
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(timeout=30)


def stored_in_redis(url: str) -> dict[str, Any]:
    from aiosessionstore.redis import RedisBackend

    backend = RedisBackend.from_url(url)
    try:
        document: dict[str, Any] = json.loads(encode(backend.peek()))
        return document
    finally:
        backend.close()


async def flush_times(store: AsyncSessionStore, count: int, times: list[float]) -> None:
    """Time ``count`` flushes of an open store, each with one increment pending."""
    for _ in range(count):
        await store.increment_tool_calls()
        start = time.perf_counter()
        await store.flush()
        times.append(time.perf_counter() - start)


async def flushes_in_turns(
    stores: list[AsyncSessionStore], count: int, turn: int = 50
) -> list[list[float]]:
    """``count`` flush times of each store, the stores taking turns of ``turn`` flushes
    (each going first in turn), so that drift on a shared machine falls on all alike."""
    times: list[list[float]] = [[] for _ in stores]
    async with contextlib.AsyncExitStack() as stack:
        for store in stores:
            await stack.enter_async_context(store)
        for number in range(max(1, count // turn)):
            shift = number % len(stores)
            for index in [*range(shift, len(stores)), *range(shift)]:
                await flush_times(stores[index], turn, times[index])
    return times


async def redis_next_to_the_file(sizes: Sizes, rows: list[Row], scratch: str) -> None:
    with redis_server(scratch) as url:
        if url is None:
            rows.append(Row("9", "Redis", "skipped: no redis-server or no redis-py"))
            return
        redis = AsyncSessionStore(url=url, handle_signals=False, app_name="bench")
        file = store_at(os.path.join(scratch, "vs-redis"))
        on_file, on_redis = await flushes_in_turns([file, redis], sizes.flushes)
        file_median, redis_median = statistics.median(on_file), statistics.median(on_redis)
        file_p99 = percentile(on_file, 0.99)
        rows.append(Row("9", "flush on the file: median, p99",
                        f"{file_median * 1e3:.2f} ms, {file_p99 * 1e3:.2f} ms"))  # fmt: skip
        rows.append(Row("9", "flush on Redis (AOF, fsync always): median, p99",
                        f"{redis_median * 1e3:.2f} ms, {percentile(on_redis, 0.99) * 1e3:.2f} ms",
                        redis_median / file_median, "median <= the file's",
                        redis_median <= file_median))  # fmt: skip
        # File and Redis in turns, so that drift on a shared machine falls on both alike.
        ratios: list[float] = []
        turns: list[Row] = []
        for database in range(1, 4):
            file_rate = await asyncio.to_thread(many_processes, sizes, turns, scratch)
            where = f"{url.rsplit('/', 1)[0]}/{database}"  # a fresh session each turn
            redis_rate = await asyncio.to_thread(many_processes, sizes, turns, scratch, where)
            ratios.append(redis_rate / file_rate)
        rows.extend(turn for turn in turns if turn.number == "9")
        ratio = statistics.median(ratios)
        exact = all(turn.met for turn in turns)
        rows.append(Row("9", "8 processes: Redis flushes/s over the file's, in turns (median of "
                        f"3: {', '.join(f'{each:.2f}x' for each in ratios)})", "",
                        ratio, ">= 1.0x, every total exact", ratio >= 1.0 and exact))  # fmt: skip


# -- 7. what a user would pick instead ------------------------------------------------------


async def rewrite_json_each_time(path: Path, count: int) -> None:
    document = {"version": 1, "stats": {"toolCalls": 0}}
    for _ in range(count):
        document["stats"]["toolCalls"] += 1  # type: ignore[index]
        temp = path.with_name(path.name + ".tmp")
        async with aiofiles.open(temp, "w") as file:
            await file.write(json.dumps(document, indent=2))
        await aiofiles.os.replace(temp, path)


async def aiosqlite_updates(path: Path, count: int) -> None:
    import aiosqlite

    async with aiosqlite.connect(path) as db:
        await db.execute("CREATE TABLE stats (name TEXT PRIMARY KEY, value INTEGER)")
        await db.execute("INSERT INTO stats VALUES ('toolCalls', 0)")
        await db.commit()
        for _ in range(count):
            await db.execute("UPDATE stats SET value = value + 1 WHERE name = 'toolCalls'")
            await db.commit()


async def diskcache_incr(path: Path, count: int) -> None:
    import diskcache

    with diskcache.Cache(str(path)) as cache:
        for _ in range(count):
            cache.incr("toolCalls")


async def alternatives(sizes: Sizes, rows: list[Row], scratch: str, ours: float) -> None:
    n = sizes.alternative
    for name, run in (
        ("rewrite the JSON file per increment (aiofiles + replace, no fsync)",
         rewrite_json_each_time),
        ("aiosqlite, an UPDATE and commit per increment", aiosqlite_updates),
        ("diskcache.Cache.incr per increment (blocking the loop)", diskcache_incr),
    ):  # fmt: skip
        path = Path(scratch, name.split()[0].strip(","))
        theirs = await rate(n, lambda: run(path, n))  # noqa: B023
        rows.append(Row("7", name, f"{theirs:,.0f}/s", ours / theirs, "(ours / theirs)"))


# -- 8. import time and memory --------------------------------------------------------------


def import_seconds(*statements: str, rounds: int = 9) -> list[float]:
    """The best time of a new interpreter running each statement, the statements taking
    turns (each going first in turn), so that drift on a shared machine falls on all alike."""
    best = [float("inf")] * len(statements)
    for number in range(rounds):
        shift = number % len(statements)
        for index in [*range(shift, len(statements)), *range(shift)]:
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", statements[index]], check=True)
            best[index] = min(best[index], time.perf_counter() - start)
    return best


MEMORY = """
import asyncio, os, sys, tempfile
from aiosessionstore import AsyncSessionStore
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
async def main(names):
    with tempfile.TemporaryDirectory() as d:
        async with AsyncSessionStore(os.path.join(d, "s.json"), handle_signals=False) as s:
            tools = [f"tool_{n:04d}_with_a_name_of_a_typical_length" for n in range(names)]
            async def count(times):
                if not names:
                    for _ in range(times):
                        await s.increment_tool_calls()
                    return
                for number in range(times):
                    async with s.tool_call(tools[number % names]):
                        pass
            await count(100_000)
            await s.flush()
            before = rss()
            await count(1_000_000)
            print(rss() - before)
asyncio.run(main(int(sys.argv[1])))
"""


def import_and_memory(rows: list[Row]) -> None:
    nothing, deps, ours = import_seconds(
        "pass", "import aiofiles, anyio, filelock", "import aiosessionstore"
    )
    deps, ours = deps - nothing, ours - nothing
    rows.append(Row("8", "import aiosessionstore (vs import aiofiles, anyio, filelock)",
                    f"{ours * 1e3:.0f} ms (deps: {deps * 1e3:.0f} ms)", ours / deps,
                    "<= 1.3x", ours / deps <= 1.3))  # fmt: skip
    if sys.platform != "linux":
        return
    for names, what in ((0, "increments"), (CAP, f"tool calls over {CAP:,} tool names")):
        growth = int(subprocess.run([sys.executable, "-c", MEMORY, str(names)],
                                    capture_output=True, text=True, check=True).stdout)  # fmt: skip
        rows.append(Row("8", f"RSS growth over 1,000,000 {what}", f"{growth / 1024:.0f} KiB",
                        None, "<= 1 MiB", growth <= 1 << 20))  # fmt: skip


# -- the report ----------------------------------------------------------------------------


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")  # fmt: skip


def markdown(rows: list[Row]) -> str:
    lines = [
        f"Machine: {machine()}; {time.strftime('%Y-%m-%d')}.",
        "",
        "| # | measure | result | ratio | target | met |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else ""
        met = "" if row.met is None else ("yes" if row.met else "**no**")
        lines.append(
            f"| {row.number} | {row.measure} | {row.result} | {ratio} | {row.target} | {met} |"
        )
    return "\n".join(lines) + "\n"


async def measure(sizes: Sizes, scratch: str) -> list[Row]:
    rows: list[Row] = []
    ours = await hot_path(sizes, rows, os.path.join(scratch, "hot"))
    await increments_while_flushing(sizes, rows, os.path.join(scratch, "busy"))
    await flush_latency(sizes, rows, os.path.join(scratch, "flush"))
    await loop_lag(sizes, rows, os.path.join(scratch, "lag"))
    await open_and_close(sizes, rows, scratch)
    many_processes(sizes, rows, scratch)
    await alternatives(sizes, rows, scratch, ours)
    await redis_next_to_the_file(sizes, rows, scratch)
    import_and_memory(rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes: a smoke test")
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS.md")
    arguments = parser.parse_args()
    sizes = Sizes(20_000, 30, 50, 2) if arguments.quick else Sizes(400_000, 300, 500, 5)
    with tempfile.TemporaryDirectory() as scratch:
        rows = asyncio.run(measure(sizes, scratch))
    report = markdown(rows)
    print(report)
    arguments.output.write_text(report)
    if not all(row.met is not False for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
