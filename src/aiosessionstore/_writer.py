"""A store's side of its backend: what it last saw there, and its writes to it, in order.

Each write takes the pending counts and runs on the store's own thread. Its outcome there,
and nothing else, settles the counts; whoever awaited the write may be cancelled or give up
waiting, which changes when the counts are settled, never how:

- a success adopts what was stored;
- a failed merge is sent again, as it was and before anything else, until one attempt
  succeeds: its reply may have been lost after the backend applied it, and a backend
  applies each numbered change at most once (the idempotent-producer pattern);
- a failed reset or new session gives its counts back to be merged later.

So the counts are stored exactly once, or still this store's to store, whatever the backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from typing import Any

import aiofiles.os
import anyio

from ._backend import Backend
from ._change import Change, Mode
from ._names import add_counts
from ._pending import Pending, Taken, describe, moment
from ._session import Counts, Record, Session, timestamp
from ._worker import WorkerThread

__all__ = ("Writer",)

logger = logging.getLogger("aiosessionstore")

_NOTHING = Counts()


class _Flight:
    """One write on the store's thread: its change, the counts it took, and its outcome."""

    __slots__ = ("abandoned", "change", "done", "error", "last", "on_success", "result", "taken")

    def __init__(self, change: Change, taken: Taken, on_success: Callable[[Any], None]) -> None:
        self.change = change
        self.taken = taken
        self.on_success = on_success
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()  # set on the store's thread
        #: Whether its caller stopped waiting, so that no one else will report a failure.
        self.abandoned = False
        #: Whether it is sent without a loop (at exit, or on a signal once the loop is gone):
        #: no later flush is due, so a failure promises none.
        self.last = False

    def run(self, write: Callable[[], Any]) -> None:
        """On the store's thread: run the write and keep its outcome."""
        try:
            self.result = write()
        except BaseException as exc:  # all of it is the outcome: it settles the counts
            self.error = exc
        finally:
            self.done.set()


def _fly(flight: _Flight, wake: Callable[[], None], write: Callable[[], Any]) -> None:
    flight.run(write)
    if flight.abandoned:  # no caller waits to settle it: have the loop do so
        wake()


#: The hop to the store's thread and back: the caller's wait ends with the write.
_in_thread = aiofiles.os.wrap(_fly)
_barrier = aiofiles.os.wrap(lambda: None)


class Writer:
    """The session as this store last read or wrote it, and the writes that change it."""

    def __init__(
        self,
        backend: Backend,
        pending: Pending,
        lock: asyncio.Lock,
        clock: Callable[[], float],
    ) -> None:
        self.backend = backend
        self._pending = pending
        self._lock = lock  # the store's: taking the pending counts is an update like any other
        self._clock = clock
        #: One write at a time, so that a flush never races this store's other I/O.
        self._io_lock = asyncio.Lock()
        #: The store's own thread: the default executor may be full of the application's
        #: blocking calls, and the closing flush must not queue behind them.
        self._thread = WorkerThread("aiosessionstore")
        #: Writes submitted and not yet settled, oldest first (the thread's order).
        self._flights: deque[_Flight] = deque()
        #: This writer's name and the number of its last change, for the backend's dedup.
        self._name = secrets.token_hex(12)
        self._number = 0
        #: A merge whose write failed, to send again as it was before any other change.
        self._unsent: tuple[Change, Taken] | None = None
        self.record: Record | None = None
        #: Whether ``record``'s identity is stored (or was, until deleted).
        self.saved = False

    def start(self, now: float) -> None:
        """Before the first write: a fresh session, used if the backend has none."""
        self.record = Record(Session.new(moment(now, timestamp(time.time()))))
        self.saved = False

    async def commit(self, mode: Mode, *, opening: bool = False) -> None:
        """Merge, reset or renew; a merge with nothing pending does no I/O at all."""
        async with self._io_lock:
            await self._drain()
            if self._unsent is not None:
                change, taken = self._unsent
                self._unsent = None
                await self._send(_Flight(change, taken, self._adopt), self.backend.commit)
            async with self._lock:
                prepared = self._prepare(mode, self._clock())
            if prepared is None:
                return
            write = self.backend.open if opening else self.backend.commit
            await self._send(_Flight(*prepared, self._adopt), write)

    async def delete(self) -> bool:
        """Delete the session and drop the pending counts; the next change starts a new one.

        A merge still to be sent again is dropped only once the delete is done: its counts
        belong to the session deleted then. A delete that fails keeps it, to be sent first.
        """
        async with self._io_lock:
            await self._drain()
            async with self._lock:
                prepared = self._prepare(Mode.RESET, self._clock())
            assert prepared is not None
            change, taken = prepared
            fresh = Record(Session.new(change.active_at))

            def forget(_existed: bool) -> None:
                self.record, self.saved = fresh, False
                self._unsent = None

            existed: bool = await self._run(_Flight(change, taken, forget), self.backend.remove)
            return existed

    def close(self) -> Future[None]:
        """Close the backend on the store's thread after any write still running there, and
        let the thread end once idle; the future is done once the backend is closed."""
        closed = self._thread.submit(self._close_backend)
        self._thread.shutdown(wait=False)
        return closed

    async def aclose(self, until: float) -> bool:
        """``close``, and wait for it until ``until`` (``time.monotonic``): a backend's close
        may still write (Redis folds its list in). False if the time ran out, the close going
        on meanwhile."""
        closed = asyncio.wrap_future(self.close())
        with anyio.CancelScope(shield=True):
            done, _ = await asyncio.wait((closed,), timeout=max(0.0, until - time.monotonic()))
        return bool(done)

    def commit_sync(self, timeout: float) -> None:
        """Merge without an event loop (at exit, or on a signal once the loop is gone).

        Waits at most ``timeout`` in all, for the earlier writes and for this one: the
        store's thread does not hold up the end of the process, so what has not landed by
        then is lost.
        """
        if self.record is None:
            return
        deadline = time.monotonic() + timeout
        if self._flights and not self._wait(self._flights[-1], deadline, timeout):
            self._not_sent()
            return
        self._settle_finished()
        if self._unsent is not None:
            change, taken = self._unsent
            self._unsent = None
            if not self._send_sync(_Flight(change, taken, self._adopt), deadline, timeout):
                self._not_sent()
                return
        prepared = self._prepare(Mode.MERGE, self._clock())
        if prepared is not None:
            self._send_sync(_Flight(*prepared, self._adopt), deadline, timeout)

    def _not_sent(self) -> None:
        """Say that the pending counts are lost: a write before them did not land, and they
        may only follow it, so the exit sends them no more than it."""
        if self._pending.active_at is not None:
            logger.error(
                "%s: the counts made after a write that did not land are not sent at exit, "
                "and are lost: %s",
                self.backend.description,
                describe(self._pending.snapshot().stats),
            )

    def session(self) -> Session:
        """The session as it stands: as last read or written, plus every count made since.

        Counts on their way to the backend are included: they are stored or about to be
        sent again, and either way still this session's.
        """
        assert self.record is not None
        session = self.record.session
        pending = self._pending
        unsettled = [
            (f.taken.counts, f.taken.active_at)
            for f in self._flights
            if f.change.mode is Mode.MERGE
        ]
        if self._unsent is not None:
            unsettled.append(self._unsent[1])
        if pending.active_at is not None:
            unsettled.append((pending.snapshot(), pending.active_at))
        for counts, active_at in unsettled:
            assert active_at is not None  # a merge takes only counts that were made
            last = session.last_active_at
            session = session.replaced(
                {
                    "last_active_at": max(last, moment(active_at, last)),
                    **add_counts(session, counts, pending.max_tools),
                }
            )
        return session

    def settled(self) -> bool:
        """Whether every count made is known to be stored, or dropped by a reset: none
        pending, no merge to send again, and no write under way."""
        return self._pending.active_at is None and self._unsent is None and not self._flights

    def unsaved(self) -> str:
        """The counts not known to be stored, as a log line names them: those pending, those
        of a merge to send again, which its backend may have applied (a lost reply), and
        those of merges under way."""
        stats = self._pending.snapshot().stats
        if self._unsent is not None:
            stats += self._unsent[1].counts.stats
        for flight in self._flights:
            if flight.change.mode is Mode.MERGE:
                stats += flight.taken.counts.stats
        return describe(stats)

    def _prepare(self, mode: Mode, now: float) -> tuple[Change, Taken] | None:
        """Take the pending counts into a numbered change; None for a merge of nothing."""
        assert self.record is not None
        pending = self._pending
        if mode is not Mode.MERGE:
            reading = now
        elif pending.active_at is None:
            return None
        else:
            reading = pending.active_at
        # All that can fail comes before take(): the counts stay pending until they are taken.
        when = moment(reading, self.record.session.last_active_at)
        taken = pending.take()
        self._number += 1
        counts = taken.counts if mode is Mode.MERGE else _NOTHING
        change = Change(
            mode, counts, when, self.record, self.saved, pending.max_tools, self._name, self._number
        )
        return change, taken

    def _adopt(self, record: Record) -> None:
        self.record, self.saved = record, True

    async def _send(self, flight: _Flight, write: Callable[[Change], Record]) -> None:
        await self._run(flight, partial(write, flight.change))

    async def _run(self, flight: _Flight, write: Callable[[], Any]) -> Any:
        """Run ``flight`` on the store's thread; its outcome settles it, awaited or not.

        The loop wakes once per write: for the end of its caller's wait, which settles it. A
        caller that stops waiting leaves the thread to wake the loop for it; whichever of the
        two sees the other's mark settles it (settling twice changes nothing).
        """
        loop = asyncio.get_running_loop()

        def wake() -> None:  # on the store's thread, for a flight no one waits for
            with contextlib.suppress(RuntimeError):  # a closed loop: commit_sync settles it
                loop.call_soon_threadsafe(self._settle_finished)

        self._flights.append(flight)
        try:
            await _in_thread(flight, wake, write, executor=self._thread)
        except BaseException:
            flight.abandoned = True  # cancelled: the flight goes on, and settles when done
            if flight.done.is_set():  # the thread had looked before the mark: settle it here
                self._settle_finished()
            raise
        self._settle_finished()
        if flight.error is not None:
            raise flight.error
        return flight.result

    def _send_sync(self, flight: _Flight, deadline: float, timeout: float) -> bool:
        """Submit a merge from outside the loop and wait for it; True once it is stored."""
        flight.abandoned = True  # no caller to raise a failure to: it is logged
        flight.last = True
        self._flights.append(flight)
        self._thread.submit(_fly, flight, _nothing, partial(self.backend.commit, flight.change))
        if not self._wait(flight, deadline, timeout):
            return False
        self._settle_finished()
        return flight.error is None

    def _wait(self, flight: _Flight, deadline: float, timeout: float) -> bool:
        if flight.done.wait(max(0.0, deadline - time.monotonic())):
            return True
        logger.error(
            "flushing %s took longer than %s s; gave up waiting, and its counts are lost "
            "if the write does not land before the process ends",
            self.backend.description,
            timeout,
        )
        return False

    async def _drain(self) -> None:
        """Let the writes of cancelled callers land first: a failed one is sent again."""
        if self._flights:
            await _barrier(executor=self._thread)  # the thread runs in order: they are done
            self._settle_finished()

    def _settle_finished(self) -> None:
        """Settle the finished writes, in the order they ran."""
        while self._flights and self._flights[0].done.is_set():
            flight = self._flights.popleft()
            if flight.error is None:
                flight.on_success(flight.result)
                continue
            if flight.change.mode is Mode.MERGE:
                # Perhaps applied with its reply lost: only the same change may follow it.
                assert self._unsent is None, "a merge was sent before the one before it landed"
                self._unsent = (flight.change, flight.taken)
            else:
                self._pending.give_back(flight.taken)
            if flight.abandoned:  # else its caller raises the error
                logger.error(
                    "writing %s failed; its counts are not known to be saved (%s): %s"
                    if flight.last
                    else "writing %s failed; its counts will be written later (%s): %s",
                    self.backend.description,
                    describe(flight.taken.counts.stats),
                    flight.error,
                )

    def _close_backend(self) -> None:
        try:
            self.backend.close()
        except Exception as exc:
            logger.warning("closing %s failed: %s", self.backend.description, exc)


def _nothing() -> None:
    pass
