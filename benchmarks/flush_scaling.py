"""How a flush scales: with the names in the file, and with the processes flushing.

``python benchmarks/flush_scaling.py [--quick] [--part names|pending|processes]
[--lock queued|polled|both]``

- names: a flush of the same pending change (one error) into a file of 0, 10, 100 and 1,000
  tool names (and 1,000 each of tools, prompts and clients), next to the bare floor: the same
  bytes written, fsynced and renamed with no store. Target: a flush at the cap at most 1.5x a
  flush at 0 names, same run.
- pending: the loop thread's part of a flush (taking the pending counts into a change) with
  10 to 1,000 pending names.
- processes: 1, 2, 4, 8 and 16 processes flushing back to back into one file; each lock wait
  is timed. Target: the worst wait at most 2x (processes x median flush time); totals exact.
  ``--lock polled`` (or ``both``) runs the lock as it was before waits queued. Every store
  stays open until all have stopped flushing, so that what is timed is processes flushing:
  ``--close-apart`` has each close and exit when its own time is up, while the last flushes
  of the others are still timed (on 2 cores, the first exits then stall the holder).

Every ratio is of figures measured in the same run, on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from run import redis_server, stored_in_redis

from aiosessionstore import AsyncSessionStore
from aiosessionstore._change import Mode
from aiosessionstore._pending import Pending

CAP = 1000


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def met(ok: bool) -> str:
    return "met" if ok else "MISSED"


# -- flush cost against the names in the file ----------------------------------------------


def bare_write(path: str, data: bytes) -> None:
    """The floor: write a temp file, fsync it, rename it over, fsync the directory."""
    temp = path + ".bare.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    directory = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


async def seeded(where: str, names: int, kinds: int) -> AsyncSessionStore:
    """An open store on a session of ``names`` tools (with ``kinds`` 3: prompts and clients
    too), in a directory or, for a URL, in Redis under an app name of its own."""
    if "://" in where:
        place: dict[str, Any] = {"url": where, "app_name": f"scaling-{names}-{kinds}"}
    else:
        place = {"path": os.path.join(where, "session.json")}
    store = AsyncSessionStore(**place, flush_interval=3600, handle_signals=False)
    await store.open()
    for number in range(names):
        name = f"tool_{number:04d}_with_a_name_of_a_typical_length"
        async with store.tool_call(name, client=f"client-{number}" if kinds > 1 else None):
            pass
        if kinds > 1:
            async with store.prompt_call(name):
                pass
    await store.flush()
    return store


async def flush_times(store: AsyncSessionStore, count: int) -> list[float]:
    times = []
    for _ in range(count):
        await store.increment_errors()  # the same pending change at every size
        start = time.perf_counter()
        await store.flush()
        times.append(time.perf_counter() - start)
    return times


SIZES = [(0, 1), (10, 1), (100, 1), (CAP, 1), (CAP, 3)]


async def names_table(count: int, rounds: int) -> bool:
    flushes: dict[tuple[int, int], list[float]] = {size: [] for size in SIZES}
    floors: dict[tuple[int, int], list[float]] = {size: [] for size in SIZES}
    with tempfile.TemporaryDirectory() as scratch:
        stores = {}
        for names, kinds in SIZES:
            directory = os.path.join(scratch, f"{names}-{kinds}")
            stores[names, kinds] = await seeded(directory, names, kinds)
        # Interleaved rounds, so that drift on a shared machine hits every size alike.
        for _ in range(rounds):
            for size, store in stores.items():
                flushes[size] += await flush_times(store, count)
                assert store.path is not None
                data = store.path.read_bytes()
                bare = str(store.path.with_name("bare.json"))
                for _ in range(count):
                    start = time.perf_counter()
                    await asyncio.to_thread(bare_write, bare, data)
                    floors[size].append(time.perf_counter() - start)
        for store in stores.values():
            await store.aclose()
    print(f"\nflush of one pending error, by names in the file ({count * rounds} flushes each)")
    return print_names(flushes, floors)


def print_names(
    flushes: dict[tuple[int, int], list[float]], floors: dict[tuple[int, int], list[float]]
) -> bool:
    zero = statistics.median(flushes[0, 1])
    print(f"{'names':>22} {'median':>9} {'p90':>9} {'floor':>9} {'x floor':>8} {'x 0 names':>9}")
    ok = True
    for (names, kinds), times in flushes.items():
        label = f"{names:,} tools" + (", prompts, clients" if kinds > 1 else "")
        median = statistics.median(times)
        floor = statistics.median(floors[names, kinds]) if floors else None
        ratio = median / zero
        line = (
            f"{label:>22} {median * 1e6:7.0f}µs {percentile(times, 0.9) * 1e6:7.0f}µs "
            + (f"{floor * 1e6:7.0f}µs {median / floor:7.2f}x" if floor else f"{'':>18}")
            + f" {ratio:8.2f}x"
        )
        if names == CAP and kinds == 1:  # the cap on tool names, the target
            good = ratio <= 1.5
            ok = ok and good
            line += f"  target <= 1.5x: {met(good)}"
        elif names == CAP and floor is not None:  # three times the names: the bytes alone cost more
            line += f"  (its bare write alone: {floor / statistics.median(floors[0, 1]):.2f}x)"
        print(line)
    return ok


async def redis_names_table(count: int, rounds: int) -> bool:
    """The names table on Redis (AOF, fsync always), if there is a redis-server."""
    with tempfile.TemporaryDirectory() as scratch, redis_server(scratch) as url:
        if url is None:
            print("\nflush on Redis by names: skipped (no redis-server or no redis-py)")
            return True
        flushes: dict[tuple[int, int], list[float]] = {size: [] for size in SIZES}
        stores = {size: await seeded(url, *size) for size in SIZES}
        for _ in range(rounds):
            for size, store in stores.items():
                flushes[size] += await flush_times(store, count)
        for store in stores.values():
            await store.aclose()
    print(f"\nthe same on Redis (AOF, appendfsync always; {count * rounds} flushes each)")
    return print_names(flushes, {})


# -- the loop thread's part of a flush ----------------------------------------------------


def pending_table() -> None:
    print(
        "\ntaking the pending counts into a change, on the loop thread (median of 50; the"
        " taken counts kept alive, as a write keeps them)"
    )
    for names in (10, 100, 1000):
        pending = Pending(CAP)
        took: list[float] = []
        copied: list[float] = []
        kept: list[object] = []
        for _ in range(50):
            for number in range(names):
                calls = pending.calls(pending.tools, f"tool_{number}")
                calls.calls += 1
                calls.timed(1.5)
                pending.client(f"client-{number}")[0] += 1
            pending.active_at = time.time()
            start = time.perf_counter()
            kept.append(pending.snapshot())  # what take() did before: convert every entry
            copied.append(time.perf_counter() - start)
            start = time.perf_counter()
            kept.append(pending.take())
            took.append(time.perf_counter() - start)
        print(
            f"{names:>6,} pending names: Pending.take() {statistics.median(took) * 1e6:8.1f} µs"
            f" (converting them all, as before: {statistics.median(copied) * 1e6:8.1f} µs)"
        )
    asyncio.run(prepare_table())


async def prepare_table() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        async with AsyncSessionStore(
            os.path.join(scratch, "session.json"), flush_interval=3600, handle_signals=False
        ) as store:
            writer = store._writer
            for names in (10, 100, 1000):
                times: list[float] = []
                kept: list[object] = []  # freeing a write's counts is no part of taking them
                for _ in range(20):
                    for number in range(names):
                        async with store.tool_call(f"tool_{number}", client=f"c{number}"):
                            pass
                    async with store._lock:
                        start = time.perf_counter()
                        prepared = writer._prepare(Mode.MERGE, time.time())
                        times.append(time.perf_counter() - start)
                    assert prepared is not None
                    kept.append(prepared)
                    writer._pending.give_back(prepared[1])
                    await store.flush()
                median = statistics.median(times)
                print(f"{names:>6,} pending names: Writer._prepare {median * 1e6:8.1f} µs")


# -- many processes -----------------------------------------------------------------------

WORKER = """
import asyncio, contextlib, json, sys, time
from aiosessionstore import AsyncSessionStore, _file, _lock
spans = []  # (asked, queued, got, let go) per lock, on the system-wide monotonic clock
real = vars(_file)["held"]
queued = []
@contextlib.contextmanager
def timed(*arguments):
    start = time.perf_counter()
    del queued[:]
    with real(*arguments):
        got = time.perf_counter()
        try:
            yield
        finally:
            spans.append((start, queued[0] if queued else start, got, time.perf_counter()))
vars(_file)["held"] = timed
take_ticket = _lock._take_ticket
def ticketed(*arguments):
    ticket = take_ticket(*arguments)
    queued.append(time.perf_counter())
    return ticket
_lock._take_ticket = ticketed
if sys.argv[3] == "polled":
    _lock._QUEUED = False  # the lock as it was: flock polled, backing off to 20 ms
async def main(path, seconds):
    async with AsyncSessionStore(path, flush_interval=3600, handle_signals=False) as store:
        sys.stdout.write("ready\\n"); sys.stdout.flush(); sys.stdin.readline()
        del spans[:]
        flushes, times, end = 0, [], time.monotonic() + seconds
        while time.monotonic() < end:
            await store.increment_tool_calls()
            start = time.perf_counter()
            await store.flush()
            times.append(time.perf_counter() - start)
            flushes += 1
        result = {"flushes": flushes, "spans": spans[:], "times": times}
        if sys.argv[4] == "stay":  # open until all have stopped: no close overlaps a flush
            sys.stdout.write("done\\n"); sys.stdout.flush(); sys.stdin.readline()
    print(json.dumps(result))
asyncio.run(main(sys.argv[1], float(sys.argv[2])))
"""


def run_together(
    script: str, processes: int, *arguments: str, stay: bool = False
) -> list[dict[str, Any]]:
    """``processes`` workers running ``script``, let go at once when all are imported and
    open (so that only the flushing is timed); what each printed, as JSON. With ``stay``,
    each says "done" when it stops flushing, and all are let close together."""
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script, *arguments],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    answer_all(workers, "ready", "go")
    if stay:
        answer_all(workers, "done", "close")
    return [json.loads(worker.communicate(timeout=600)[0]) for worker in workers]


def answer_all(workers: list[subprocess.Popen[str]], line: str, answer: str) -> None:
    """Once every worker has said ``line``, say ``answer`` to each: they go on together."""
    for worker in workers:
        assert worker.stdout is not None
        assert worker.stdout.readline() == line + "\n"
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write(answer + "\n")
        worker.stdin.flush()


def overtaken(spans: list[list[float]]) -> int:
    """The most locks granted to others while one waited from its ticket on (from the call
    where there are none): at most processes - 1 if first come is first served."""
    granted = sorted(span[2] for span in spans)
    return max(
        bisect.bisect_left(granted, got) - bisect.bisect_right(granted, queued)
        for _, queued, got, _ in spans
    )


def processes_row(
    scratch: str, processes: int, seconds: float, alone: float, lock: str, stay: bool
) -> tuple[bool, float]:
    """One row: ``processes`` flushing for ``seconds``; whether it met the target, and the
    median flush time of a process on its own (``alone``, or this row's if it is the first)."""
    path = os.path.join(scratch, f"{lock}{processes}", "session.json")
    ending = "stay" if stay else "close"
    results = run_together(WORKER, processes, path, str(seconds), lock, ending, stay=stay)
    flushes = sum(result["flushes"] for result in results)
    spans = [span for result in results for span in result["spans"]]
    waits = [got - asked for asked, _, got, _ in spans]
    holds = [done - got for _, _, got, done in spans]
    times = [time for result in results for time in result["times"]]
    total = json.loads(Path(path).read_text())["stats"]["toolCalls"]
    exact = bool(total == flushes)  # the opening transaction counts nothing
    alone = alone or statistics.median(times)
    worst, held = max(waits), statistics.median(holds)
    bound = 2 * processes * alone
    good = worst <= bound and exact
    print(
        f"{lock:>6} {processes:>5} {flushes:>7,} {'yes' if exact else 'NO':>5} "
        f"{statistics.median(waits) * 1e3:>8.2f} {percentile(waits, 0.99) * 1e3:>8.2f} "
        f"{worst * 1e3:>8.2f} {overtaken(spans):>9} {held * 1e3:>8.2f} {max(holds) * 1e3:>8.2f} "
        f"{statistics.median(times) * 1e3:>9.2f} {bound * 1e3:>8.2f}  {met(good):<6} "
        f"{2 * processes * held * 1e3:>8.2f}  {met(worst <= 2 * processes * held)}"
    )
    return good, alone


def processes_table(seconds: float, locks: list[str], stay: bool) -> bool:
    ending = "; each store kept open until all have stopped flushing" if stay else ""
    print(
        f"\nprocesses flushing back to back for {seconds} s into one file{ending} (times in ms). "
        "overtaken: the most locks granted to others during one wait, from its ticket on "
        "(first come, first served: at most procs - 1); "
        "bound: 2 x procs x the median flush of one process alone; by held: 2 x procs x this "
        "row's median time holding the lock"
    )
    print(
        f"{'lock':>6} {'procs':>5} {'flushes':>7} {'exact':>5} {'wait p50':>8} "
        f"{'wait p99':>8} {'worst':>8} {'overtaken':>9} {'held p50':>8} {'held max':>8} "
        f"{'flush p50':>9} "
        f"{'bound':>8}  {'':<6} {'by held':>8}"
    )
    ok = True
    alone = dict.fromkeys(locks, 0.0)
    with tempfile.TemporaryDirectory() as scratch:
        for processes in (1, 2, 4, 8, 16):
            for lock in locks:  # side by side, row by row: the machine's load drifts
                good, alone[lock] = processes_row(
                    scratch, processes, seconds, alone[lock], lock, stay
                )
                ok = ok and (good or lock == "polled")
    return ok


REDIS_WORKER = """
import asyncio, json, sys, time
from aiosessionstore import AsyncSessionStore
async def main(url, seconds):
    async with AsyncSessionStore(url=url, flush_interval=3600, handle_signals=False) as store:
        sys.stdout.write("ready\\n"); sys.stdout.flush(); sys.stdin.readline()
        flushes, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            await store.increment_tool_calls()
            await store.flush()
            flushes += 1
    print(json.dumps({"flushes": flushes}))
asyncio.run(main(sys.argv[1], float(sys.argv[2])))
"""


def redis_processes_table(seconds: float) -> bool:
    """Processes flushing back to back into one session on Redis: flushes/s, exact totals."""
    with tempfile.TemporaryDirectory() as scratch, redis_server(scratch) as url:
        if url is None:
            print("\nprocesses on Redis: skipped (no redis-server or no redis-py)")
            return True
        print(f"\nprocesses flushing back to back for {seconds} s into one session on Redis "
              "(AOF, appendfsync always)")  # fmt: skip
        print(f"{'procs':>5} {'flushes':>8} {'stored':>8} {'exact':>6} {'flushes/s':>10}")
        ok = True
        for database, processes in enumerate((1, 2, 4, 8, 16)):
            where = f"{url.rsplit('/', 1)[0]}/{database}"
            results = run_together(REDIS_WORKER, processes, where, str(seconds))
            flushes = sum(result["flushes"] for result in results)
            stored = stored_in_redis(where)["stats"]["toolCalls"]
            exact = stored == flushes
            ok = ok and exact
            print(f"{processes:>5} {flushes:>8,} {stored:>8,} {'yes' if exact else 'NO':>6} "
                  f"{flushes / seconds:>10,.0f}")  # fmt: skip
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes: a smoke test")
    parser.add_argument("--part", choices=["names", "pending", "processes"], action="append")
    parser.add_argument(
        "--lock",
        choices=["queued", "polled", "both"],
        default="queued",
        help="processes: the lock as shipped (queued), as it was (polled), or both",
    )
    parser.add_argument(
        "--no-redis", action="store_true", help="processes: the file table only, not Redis"
    )
    parser.add_argument(
        "--close-apart",
        action="store_true",
        help="processes: each worker closes its store and exits when its own time is up, "
        "while the others' last flushes are still timed (by default all close together)",
    )
    arguments = parser.parse_args()
    parts = arguments.part or ["names", "pending", "processes"]
    ok = True
    if "names" in parts:
        rounds = 3 if arguments.quick else 20
        ok = bool(asyncio.run(names_table(10, rounds))) and ok
        ok = bool(asyncio.run(redis_names_table(10, rounds))) and ok
    if "pending" in parts:
        pending_table()
    if "processes" in parts:
        locks = ["polled", "queued"] if arguments.lock == "both" else [arguments.lock]
        ok = (
            processes_table(1.0 if arguments.quick else 4.0, locks, stay=not arguments.close_apart)
            and ok
        )
        if not arguments.no_redis:
            ok = redis_processes_table(1.0 if arguments.quick else 4.0) and ok
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
