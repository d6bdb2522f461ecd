"""AsyncSessionStore: counters in memory, merged into the shared session file in the background."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, TypeVar

import aiofiles.os
import anyio

from . import _file
from ._errors import StoreClosedError
from ._file import Change, Mode
from ._location import resolve_path
from ._session import Record, Session, SessionStats, timestamp

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ("AsyncSessionStore",)

logger = logging.getLogger("aiosessionstore")

_T = TypeVar("_T")

_TOOL_CALLS, _PROMPT_CALLS, _ERRORS, _RATE_LIMITS = range(4)


class _Taken(NamedTuple):
    """Pending counts moved out for one transaction, to give back if it fails."""

    change: Change
    stats: SessionStats
    active_at: float | None


_commit_in_thread = aiofiles.os.wrap(_file.commit)
_remove_in_thread = aiofiles.os.wrap(_file.remove)


class AsyncSessionStore(anyio.AsyncContextManagerMixin):
    """A persistent session whose counters many tasks and processes may update at once.

    Counter updates only touch memory. A background task merges them into the session file
    every ``flush_interval`` seconds, and leaving ``async with`` merges the rest.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        app_name: str = "octocode",
        flush_interval: float = 60.0,
        force_new: bool = False,
        lock_timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path: Path = resolve_path(path, app_name)
        self._flush_interval = _positive("flush_interval", flush_interval)
        self._lock_timeout = _positive("lock_timeout", lock_timeout)
        self._force_new = force_new
        self._clock = clock
        #: Serializes updates of the pending counts; never held across an await.
        self._lock = asyncio.Lock()
        #: One file transaction at a time, so a flush never races this store's other I/O.
        self._io_lock = asyncio.Lock()
        self._record: Record | None = None  # the session as last read or written
        self._saved = False  # whether _record's identity is on disk (or was, until deleted)
        self._open = False
        self._closed: anyio.Event | None = None  # set once closed; None until first opened
        self._flusher: anyio.CancelScope | None = None  # the background flush, while open
        #: Pending counts, indexed like SessionStats' fields: a list is the cheapest to add to.
        self._pending = [0, 0, 0, 0]
        self._active_at: float | None = None  # time of the last change; None: nothing pending

    def __repr__(self) -> str:
        state = "open" if self._open else "closed"
        return f"<{type(self).__name__} {str(self.path)!r} {state}>"

    # -- lifecycle -------------------------------------------------------------------------

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncGenerator[Self]:
        if self._closed is not None:
            raise RuntimeError("an AsyncSessionStore can be opened only once; create a new one")
        self._closed = anyio.Event()
        try:
            await self._load()
        except BaseException:
            self._closed.set()
            raise
        self._open = True
        # The body's exception is caught here and raised outside the task group, which
        # would otherwise wrap it in an ExceptionGroup the caller never asked for.
        body_error: BaseException | None = None
        self._flusher = anyio.CancelScope()
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._flush_periodically, self._flusher)
                try:
                    yield self
                except BaseException as exc:
                    body_error = exc
                self._flusher.cancel()
        finally:
            try:
                await self.aclose()
            except Exception:
                if body_error is None:
                    raise  # else it is logged, and the body's exception matters more
        if body_error is not None:
            raise body_error

    async def aclose(self) -> None:
        """Stop the background flush and flush what is pending; safe to call more than once."""
        if not self._open:
            if self._closed is not None:
                await self._closed.wait()  # another task is closing: wait until it is done
            return
        self._open = False
        if self._flusher is not None:
            self._flusher.cancel()
        try:
            with anyio.CancelScope(shield=True):
                await self._commit(Mode.MERGE)
        except Exception:
            logger.error("final flush of %s failed: %s lost", self.path, self._pending_summary())
            raise
        finally:
            assert self._closed is not None
            self._closed.set()

    async def _load(self) -> None:
        """Load or create the session and write it at once, as the seed's getOrCreateSession."""
        now = self._clock()
        self._record = Record(Session.new(timestamp(now)))
        self._active_at = now
        await self._commit(Mode.NEW if self._force_new else Mode.MERGE)

    async def _flush_periodically(self, scope: anyio.CancelScope) -> None:
        with scope:
            while True:
                await anyio.sleep(self._flush_interval)
                try:
                    await self._commit(Mode.MERGE)
                except Exception as exc:
                    logger.warning(
                        "background flush of %s failed, will retry in %s s: %s",
                        self.path,
                        self._flush_interval,
                        exc,
                    )

    # -- the session -----------------------------------------------------------------------

    @property
    def session(self) -> Session:
        """The session as it stands, pending counts included (no I/O)."""
        if not self._open:
            raise StoreClosedError(f"the session store for {self.path} is not open")
        assert self._record is not None
        session = self._record.session
        if self._active_at is None:
            return session
        return replace(
            session,
            last_active_at=max(session.last_active_at, timestamp(self._active_at)),
            stats=session.stats + self._pending_stats(),
        )

    @property
    def session_id(self) -> str:
        """The current session id; still readable after the store is closed."""
        if self._record is None:
            raise StoreClosedError(f"the session store for {self.path} was never opened")
        return self._record.session.session_id

    # -- the hot path: memory only ---------------------------------------------------------

    async def increment_tool_calls(self, count: int = 1) -> None:
        """Count ``count`` tool calls."""
        await self._count(_TOOL_CALLS, count)

    async def increment_prompt_calls(self, count: int = 1) -> None:
        """Count ``count`` prompt calls."""
        await self._count(_PROMPT_CALLS, count)

    async def increment_errors(self, count: int = 1) -> None:
        """Count ``count`` errors."""
        await self._count(_ERRORS, count)

    async def increment_rate_limits(self, count: int = 1) -> None:
        """Count ``count`` rate limits."""
        await self._count(_RATE_LIMITS, count)

    async def update_stats(
        self, *, tool_calls: int = 0, prompt_calls: int = 0, errors: int = 0, rate_limits: int = 0
    ) -> None:
        """Add to several counters at once."""
        for count in (tool_calls, prompt_calls, errors, rate_limits):
            if type(count) is not int or count < 0 or not self._open:
                self._reject(count)
        async with self._lock:
            self._add(SessionStats(tool_calls, prompt_calls, errors, rate_limits), self._clock())

    async def _count(self, counter: int, count: int) -> None:
        """The hot path: check, then add under the lock; no allocation, no formatting."""
        if type(count) is not int or count < 0 or not self._open:
            self._reject(count)
        await self._lock.acquire()  # not ``async with``: a coroutine frame less per call
        try:
            self._pending[counter] += count
            self._active_at = self._clock()
        finally:
            self._lock.release()

    def _reject(self, count: object) -> None:
        if not self._open:
            raise StoreClosedError(f"the session store for {self.path} is not open")
        if type(count) is not int:
            raise TypeError(f"count must be an int, not {type(count).__name__}")
        raise ValueError(f"count must not be negative, got {count}")

    # -- writes to disk --------------------------------------------------------------------

    async def flush(self) -> None:
        """Merge the pending counts into the session file; durable on disk when it returns."""
        self._check_open()
        await self._commit(Mode.MERGE)

    async def reset_stats(self) -> Session:
        """Zero the counters on disk and here, keeping the session id; written at once."""
        self._check_open()
        await self._commit(Mode.RESET)
        return self.session

    async def new_session(self) -> Session:
        """Start a new session id with zero counters; written at once."""
        self._check_open()
        await self._commit(Mode.NEW)
        return self.session

    async def delete(self) -> bool:
        """Delete the session file and drop the pending counts; True if the file existed.

        Nothing is written again until the next change, which starts a new session.
        """
        self._check_open()
        return await self._delete()

    def _check_open(self) -> None:
        if not self._open:
            raise StoreClosedError(f"the session store for {self.path} is not open")

    async def _commit(self, mode: Mode) -> None:
        async with self._io_lock:
            taken = await self._take(mode)
            if taken is None:
                return  # nothing pending: nothing to write
            transaction = _commit_in_thread(self.path, taken.change, self._lock_timeout)
            await self._settle(taken, transaction, self._adopt)

    def _adopt(self, record: Record) -> None:
        self._record, self._saved = record, True

    async def _delete(self) -> bool:
        async with self._io_lock:
            taken = await self._take(Mode.RESET)
            assert taken is not None
            fresh = Record(Session.new(taken.change.active_at))

            def forget(_existed: bool) -> None:
                self._record, self._saved = fresh, False

            transaction = _remove_in_thread(self.path, self._lock_timeout)
            return await self._settle(taken, transaction, forget)

    async def _take(self, mode: Mode) -> _Taken | None:
        """Move the pending counts out, into the Change that writes them (or zeroes them)."""
        async with self._lock:
            taken_at = self._active_at
            if mode is Mode.MERGE and taken_at is None:
                return None
            stats = self._pending_stats()
            self._pending = [0, 0, 0, 0]
            self._active_at = None
        assert self._record is not None
        if mode is Mode.MERGE:
            assert taken_at is not None
            change = Change(mode, stats, timestamp(taken_at), self._record, self._saved)
        else:
            now = timestamp(self._clock())
            change = Change(mode, SessionStats(), now, self._record, self._saved)
        return _Taken(change, stats, taken_at)

    async def _settle(
        self,
        taken: _Taken,
        transaction: Awaitable[_T],
        on_success: Callable[[_T], None],
    ) -> _T:
        """Run a file transaction to its end, then settle the taken counts: written, or pending.

        A worker thread cannot be stopped half way, so a cancellation (a deadline, a cancelled
        caller) waits for the transaction and is raised after it: the counts are then on disk
        exactly once, or pending again, never lost and never counted twice.
        """
        task = asyncio.ensure_future(transaction)
        cancelled: BaseException | None = None
        while not task.done():
            try:
                await asyncio.wait((task,))
            except asyncio.CancelledError as exc:
                cancelled = exc
        if task.cancelled() or task.exception() is not None:
            self._add(taken.stats, taken.active_at)
        else:
            on_success(task.result())
        if cancelled is not None:
            raise cancelled
        return task.result()

    def _add(self, stats: SessionStats, active_at: float | None) -> None:
        """Add counts to the pending ones (new ones, or ones a failed write gives back)."""
        self._pending[_TOOL_CALLS] += stats.tool_calls
        self._pending[_PROMPT_CALLS] += stats.prompt_calls
        self._pending[_ERRORS] += stats.errors
        self._pending[_RATE_LIMITS] += stats.rate_limits
        if active_at is not None and (self._active_at is None or active_at > self._active_at):
            self._active_at = active_at

    def _pending_stats(self) -> SessionStats:
        return SessionStats(*self._pending)

    def _pending_summary(self) -> str:
        stats = self._pending_stats()
        return (
            f"{stats.tool_calls} tool calls, {stats.prompt_calls} prompt calls, "
            f"{stats.errors} errors, {stats.rate_limits} rate limits"
        )


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if math.isnan(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value}")
    return float(value)
