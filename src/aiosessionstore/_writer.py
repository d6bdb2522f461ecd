"""A store's side of the file: what it last saw there, and one transaction at a time to it.

Each transaction takes the pending counts, runs in one worker-thread hop, and then settles
them: on disk exactly once, or pending again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import aiofiles.os
import anyio

from . import _file
from ._file import Mode
from ._pending import Pending, Taken
from ._session import Record, Session, timestamp

__all__ = ("Writer",)

logger = logging.getLogger("aiosessionstore")

_T = TypeVar("_T")

_open_in_thread = aiofiles.os.wrap(_file.open_session)
_commit_in_thread = aiofiles.os.wrap(_file.commit)
_remove_in_thread = aiofiles.os.wrap(_file.remove)


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
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aiosessionstore")
        self.record: Record | None = None
        #: Whether ``record``'s identity is on disk (or was, until deleted).
        self.saved = False

    def start(self, now: float) -> None:
        """Before the first transaction: a fresh session, used if the file has none."""
        self.record = Record(Session.new(timestamp(now)))
        self.saved = False

    async def commit(
        self, mode: Mode, *, deadline: float | None = None, opening: bool = False
    ) -> None:
        """Merge, reset or renew; a merge with nothing pending does no I/O at all."""
        async with self._io_lock:
            taken = await self._take(mode)
            if taken is None:
                return
            run = _open_in_thread if opening else _commit_in_thread
            transaction = run(self._path, taken.change, self._lock_timeout, executor=self._executor)
            await self._settle(taken, transaction, self._adopt, deadline)

    async def delete(self) -> bool:
        """Delete the file and drop the pending counts; the next change starts a new session."""
        async with self._io_lock:
            taken = await self._take(Mode.RESET)
            assert taken is not None
            fresh = Record(Session.new(taken.change.active_at))

            def forget(_existed: bool) -> None:
                self.record, self.saved = fresh, False

            transaction = _remove_in_thread(self._path, self._lock_timeout, executor=self._executor)
            return await self._settle(taken, transaction, forget)

    def close(self) -> None:
        """Let the thread end once idle; a transaction still running there runs to its end."""
        self._executor.shutdown(wait=False)

    def commit_sync(self, timeout: float) -> None:
        """Merge without an event loop (at exit, or on a signal once the loop is gone)."""
        if self.record is None:
            return
        taken = self._pending.take(Mode.MERGE, self.record, self.saved, self._clock())
        if taken is None:
            return
        try:
            self._adopt(_file.commit(self._path, taken.change, timeout))
        except Exception as exc:
            self._pending.give_back(taken)
            logger.error("flushing %s failed; not saved: %s (%s)", self._path, self._pending, exc)

    def _adopt(self, record: Record) -> None:
        self.record, self.saved = record, True

    async def _take(self, mode: Mode) -> Taken | None:
        assert self.record is not None
        async with self._lock:
            return self._pending.take(mode, self.record, self.saved, self._clock())

    async def _settle(
        self,
        taken: Taken,
        transaction: Awaitable[_T],
        on_success: Callable[[_T], None],
        deadline: float | None = None,
    ) -> _T:
        """Run a transaction to its end and settle the taken counts: written, or pending.

        A worker thread cannot be stopped half way, so a cancellation (a deadline, a cancelled
        caller) waits for the transaction and is raised after it: the counts are then on disk
        exactly once, or pending again, never lost and never counted twice. Only past
        ``deadline`` (closing on a stuck disk) does it stop waiting; the thread then settles
        the counts when, and if, it ends.
        """
        task = asyncio.ensure_future(transaction)

        def settle(task: asyncio.Future[_T]) -> None:
            if task.cancelled() or task.exception() is not None:
                self._pending.give_back(taken)
            else:
                on_success(task.result())

        task.add_done_callback(settle)  # runs before the wait below returns
        cancelled: BaseException | None = None
        while not task.done():
            try:
                await asyncio.wait((task,))
            except asyncio.CancelledError as exc:
                if deadline is not None and anyio.current_time() >= deadline:
                    raise
                cancelled = exc
        if cancelled is not None:
            raise cancelled
        return task.result()
