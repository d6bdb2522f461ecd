"""A store's side of the file: what it last saw there, and its transactions to it, in order.

Each transaction takes the pending counts and runs on the store's own thread. Its outcome
there, and nothing else, settles the counts: a success adopts what was written, a failure
gives the counts back to be written later. Whoever awaited the transaction may be cancelled
or give up waiting; that changes when the counts are settled, never how, so they are on disk
exactly once or pending again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiofiles.os

from . import _file
from ._file import Mode
from ._names import add_counts
from ._pending import Pending, Taken, moment
from ._session import Record, Session, timestamp
from ._worker import WorkerThread

__all__ = ("Writer",)

logger = logging.getLogger("aiosessionstore")


class _Flight:
    """One transaction on the store's thread: the counts it took and, once done, its outcome."""

    __slots__ = ("abandoned", "done", "error", "on_success", "result", "taken")

    def __init__(self, taken: Taken, on_success: Callable[[Any], None]) -> None:
        self.taken = taken
        self.on_success = on_success
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()  # set on the store's thread
        #: Whether its caller stopped waiting, so that no one else will report a failure.
        self.abandoned = False

    def run(self, transaction: Callable[..., Any], *args: Any) -> None:
        """On the store's thread: run the transaction and keep its outcome."""
        try:
            self.result = transaction(*args)
        except BaseException as exc:  # all of it is the outcome: the counts go back
            self.error = exc
        finally:
            self.done.set()


def _fly(
    flight: _Flight,
    wake: Callable[[], None],
    transaction: Callable[..., Any],
    *args: Any,
) -> None:
    flight.run(transaction, *args)
    wake()


_in_thread = aiofiles.os.wrap(_fly)
_barrier = aiofiles.os.wrap(lambda: None)


class Writer:
    """The session as this store last read or wrote it, and the transactions that change it."""

    def __init__(
        self,
        path: Path,
        pending: Pending,
        lock: asyncio.Lock,
        clock: Callable[[], float],
        lock_timeout: float,
    ) -> None:
        self._path = path
        self._pending = pending
        self._lock = lock  # the store's: taking the pending counts is an update like any other
        self._clock = clock
        self._lock_timeout = lock_timeout
        #: One transaction at a time, so that a flush never races this store's other I/O.
        self._io_lock = asyncio.Lock()
        #: The store's own thread: the default executor may be full of the application's
        #: blocking calls, and the closing flush must not queue behind them.
        self._thread = WorkerThread("aiosessionstore")
        #: Transactions submitted and not yet settled, oldest first (the thread's order).
        self._flights: deque[_Flight] = deque()
        self.record: Record | None = None
        #: Whether ``record``'s identity is on disk (or was, until deleted).
        self.saved = False

    def start(self, now: float) -> None:
        """Before the first transaction: a fresh session, used if the file has none."""
        self.record = Record(Session.new(moment(now, timestamp(time.time()))))
        self.saved = False

    async def commit(self, mode: Mode, *, opening: bool = False) -> None:
        """Merge, reset or renew; a merge with nothing pending does no I/O at all."""
        async with self._io_lock:
            await self._drain()
            taken = await self._take(mode)
            if taken is None:
                return
            transaction = _file.open_session if opening else _file.commit
            flight = _Flight(taken, self._adopt)
            await self._run(flight, transaction, self._path, taken.change, self._lock_timeout)

    async def delete(self) -> bool:
        """Delete the file and drop the pending counts; the next change starts a new session."""
        async with self._io_lock:
            await self._drain()
            taken = await self._take(Mode.RESET)
            assert taken is not None
            fresh = Record(Session.new(taken.change.active_at))

            def forget(_existed: bool) -> None:
                self.record, self.saved = fresh, False

            existed: bool = await self._run(
                _Flight(taken, forget), _file.remove, self._path, self._lock_timeout
            )
            return existed

    def close(self) -> None:
        """Let the thread end once idle; a transaction still running there runs to its end."""
        self._thread.shutdown(wait=False)

    def commit_sync(self, timeout: float) -> None:
        """Merge without an event loop (at exit, or on a signal once the loop is gone).

        Waits at most ``timeout`` for this and any earlier transaction: the store's thread
        does not hold up the end of the process, so what has not landed by then is lost.
        """
        if self.record is None:
            return
        self._settle_finished()
        taken = self._pending.take(Mode.MERGE, self.record, self.saved, self._clock())
        if taken is not None:
            flight = _Flight(taken, self._adopt)
            flight.abandoned = True  # no caller to raise a failure to: it is logged
            self._flights.append(flight)
            self._thread.submit(
                _fly, flight, _nothing, _file.commit, self._path, taken.change, self._lock_timeout
            )
        if self._flights and not self._flights[-1].done.wait(timeout):
            logger.error(
                "flushing %s took longer than %s s; gave up waiting, and its counts are lost "
                "if the write does not land before the process ends",
                self._path,
                timeout,
            )
            return
        self._settle_finished()

    def session(self) -> Session:
        """The session as it stands: as last read or written, plus every count made since.

        Counts on their way to the file are included: they are on disk or about to be
        pending again, and either way still this session's.
        """
        assert self.record is not None
        session = self.record.session
        pending = self._pending
        unsettled = [
            (f.taken.counts, f.taken.active_at)
            for f in self._flights
            if f.taken.change.mode is Mode.MERGE
        ]
        if pending.active_at is not None:
            unsettled.append((pending.snapshot(), pending.active_at))
        for counts, active_at in unsettled:
            assert active_at is not None  # a merge takes only counts that were made
            last = session.last_active_at
            session = replace(
                session,
                last_active_at=max(last, moment(active_at, last)),
                **add_counts(session, counts, pending.max_tools),
            )
        return session

    def _adopt(self, record: Record) -> None:
        self.record, self.saved = record, True

    async def _take(self, mode: Mode) -> Taken | None:
        assert self.record is not None
        async with self._lock:
            return self._pending.take(mode, self.record, self.saved, self._clock())

    async def _run(self, flight: _Flight, transaction: Callable[..., Any], *args: Any) -> Any:
        """Run ``flight`` on the store's thread; its outcome settles it, awaited or not."""
        loop = asyncio.get_running_loop()

        def wake() -> None:  # on the store's thread, once the outcome is known
            with contextlib.suppress(RuntimeError):  # a closed loop: commit_sync settles it
                loop.call_soon_threadsafe(self._settle_finished)

        self._flights.append(flight)
        try:
            await _in_thread(flight, wake, transaction, *args, executor=self._thread)
        except BaseException:
            flight.abandoned = True  # cancelled: the flight goes on, and settles when done
            raise
        self._settle_finished()
        if flight.error is not None:
            raise flight.error
        return flight.result

    async def _drain(self) -> None:
        """Let the transactions of cancelled callers land first: a failed one gives counts back."""
        if self._flights:
            await _barrier(executor=self._thread)  # the thread runs in order: they are done
            self._settle_finished()

    def _settle_finished(self) -> None:
        """Settle the finished transactions, in the order they ran."""
        while self._flights and self._flights[0].done.is_set():
            flight = self._flights.popleft()
            if flight.error is None:
                flight.on_success(flight.result)
                continue
            self._pending.give_back(flight.taken)
            if flight.abandoned:  # else its caller raises the error
                logger.error(
                    "writing %s failed; its counts are pending again (%s): %s",
                    self._path,
                    self._pending,
                    flight.error,
                )


def _nothing() -> None:
    pass
