"""AsyncSessionStore: counters in memory, merged into the shared session in the background."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from . import _shutdown
from ._backend import Backend
from ._change import Mode
from ._errors import StoreClosedError
from ._location import resolve_backend
from ._names import DEFAULT_MAX_TOOLS, check_max_tools, check_name, client_name
from ._pending import (
    ERRORS,
    PROMPT_CALLS,
    RATE_LIMITS,
    TOOL_CALLS,
    Calls,
    Pending,
)
from ._session import Counts, Session, SessionStats
from ._tools import Counting, Outcome, ToolCall
from ._writer import Writer

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ("AsyncSessionStore",)

logger = logging.getLogger("aiosessionstore")


class AsyncSessionStore(anyio.AsyncContextManagerMixin):
    """A persistent session whose counters many tasks and processes may update at once.

    Counter updates only touch memory. A background task merges them into the session (a
    file, or Redis) every ``flush_interval`` seconds, and leaving ``async with`` merges the
    rest.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        url: str | None = None,
        backend: Backend | None = None,
        app_name: str = "octocode",
        flush_interval: float = 60.0,
        force_new: bool = False,
        rate_limit_errors: tuple[type[BaseException], ...] = (),
        handle_signals: bool = True,
        close_timeout: float = 2.0,
        lock_timeout: float = 10.0,
        max_tools: int = DEFAULT_MAX_TOOLS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._flush_interval = _positive("flush_interval", flush_interval)
        self._close_timeout = _positive("close_timeout", close_timeout)
        #: Where the session lives: a file (the default), Redis, or a backend of your own.
        self.backend: Backend = resolve_backend(
            path, url, backend, app_name, _positive("lock_timeout", lock_timeout)
        )
        #: The session file, for the file backend; None for any other.
        self.path: Path | None = getattr(self.backend, "path", None)
        self._where = self.backend.description
        self._force_new = force_new
        #: Exceptions that ``tool_call`` counts as rate limits rather than errors.
        self.rate_limit_errors = rate_limit_errors
        self._handle_signals = handle_signals
        self._clock = clock
        #: Serializes updates of the pending counts; never held across an await.
        self._lock = asyncio.Lock()
        self._open = False
        self._opened: anyio.Event | None = None  # set once open() is done; None before it
        self._closing: asyncio.Task[None] | None = None  # the close, once asked for
        self._flusher: anyio.CancelScope | None = None  # the background flush, while open
        self._flusher_task: asyncio.Task[None] | None = None
        #: The exit hook, fork handling and signal handlers, while the store is open.
        self._guards = contextlib.ExitStack()
        self._pending = Pending(check_max_tools(max_tools))
        self._writer = Writer(self.backend, self._pending, self._lock, clock)
        self._counting = Counting(self._call_started, self._call_finished)

    def __repr__(self) -> str:
        state = "open" if self._open else "closed"
        return f"<{type(self).__name__} {self.backend!r} {state}>"

    # -- lifecycle -------------------------------------------------------------------------

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncGenerator[Self]:
        await self.open()
        try:
            yield self
        except BaseException:
            with contextlib.suppress(Exception):  # logged; the body's exception matters more
                await self.aclose()
            raise
        await self.aclose()

    async def open(self) -> Self:
        """Load or create the session, write it at once, and start the background flush.

        ``async with store`` calls it; call it yourself where a host opens and closes in two
        different tasks (aiohttp's ``on_startup`` and ``on_cleanup``), then ``aclose()``.
        """
        if self._opened is not None:
            raise RuntimeError("an AsyncSessionStore can be opened only once; create a new one")
        self._opened = anyio.Event()
        try:
            await self._load()
        except BaseException:
            self._writer.close()
            raise
        else:
            self._open = True
            self._guards = _shutdown.protect(
                self,
                flush=self._flush_on_signal,
                flush_sync=self._flush_sync,
                unsaved=self._unsaved,
                patience=self._close_timeout,
                detach=self._detach,
                is_open=lambda: self._open,
                signals=self._handle_signals,
            )
            self._flusher = anyio.CancelScope()
            self._flusher_task = asyncio.get_running_loop().create_task(
                self._run_flusher(self._flusher), name=f"aiosessionstore flusher for {self._where}"
            )
        finally:
            self._opened.set()
        return self

    async def aclose(self) -> None:
        """Stop the background flush, flush what is pending, and close the backend (Redis
        folds its list in); safe to call more than once.

        Any task may close the store, not only its opener, also while it is still opening.
        The close runs in a task of its own, waited for even in a cancelled scope; a caller
        interrupted anyway (a native ``task.cancel()``) leaves it running to its end. The
        final flush and the backend's close are bounded by ``close_timeout`` together, so a
        stuck disk or server cannot hang shutdown.
        The first caller gets the close's error, if any; later ones just wait for it.
        """
        first = self._closing is None
        if self._closing is None:
            name = f"aiosessionstore close of {self._where}"
            self._closing = asyncio.get_running_loop().create_task(self._close(), name=name)
        closing = self._closing
        with anyio.CancelScope(shield=True):  # a cancelled block still waits for its close
            await asyncio.wait((closing,))
        error = None if closing.cancelled() else closing.exception()
        if first and error is not None:
            raise error

    async def _close(self) -> None:
        if self._opened is None:
            return  # never opened: nothing to close
        await self._opened.wait()
        if not self._open:
            return  # the open failed, or a forked child's copy
        self._open = False
        if self._flusher is not None:
            self._flusher.cancel()  # it winds down while the final flush runs
        deadline = time.monotonic() + self._close_timeout
        flushed = False
        try:
            flushed = await self._bounded_flush(self._close_timeout)
        except Exception:
            logger.error(  # its reply may be what was lost: the counts may be stored
                "final flush of %s failed; not known to be saved: %s",
                self._where,
                self._writer.unsaved(),
            )
            raise
        finally:
            await self._flusher_ended()
            if not flushed:  # the store's thread may be stuck: wait no longer
                self._writer.close()
            elif not await self._writer.aclose(deadline):
                logger.warning(
                    "closing %s took longer than %s s; stopped waiting: it goes on in the "
                    "background until the process ends",
                    self._where,
                    self._close_timeout,
                )
            if flushed:  # else a signal, or the exit hook, makes one more attempt
                self._guards.close()

    async def _run_flusher(self, scope: anyio.CancelScope) -> None:
        """The background flush, in a task group of a task of its own.

        Hosts enter and leave a lifespan in cancel scopes and tasks of their own (FastMCP
        does), so no cancel scope of ours may stay open in the task that opened the store.
        """
        flushing = self._flush_periodically()
        try:
            with scope:
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(lambda: flushing)
        finally:
            # A loop shut down before the task's first step cancels it unstarted, and Python
            # would warn that the coroutine was "never awaited": close it (no-op once run).
            flushing.close()

    async def _flusher_ended(self) -> None:
        """Wait for the cancelled background flush to end (cancelled before it started, too,
        it ends at its first await), and report it if it died of something else.

        Bounded by ``close_timeout``: a flush task broken by an exception raised inside it at
        a random moment (a KeyboardInterrupt, on Python 3.10) must not hang the close.
        """
        task = self._flusher_task
        if task is None:
            return
        with anyio.CancelScope(shield=True):
            await asyncio.wait((task,), timeout=self._close_timeout)
        if not task.done():
            logger.error("the background flush of %s did not stop; left behind", self._where)
        elif not task.cancelled() and task.exception() is not None:
            logger.error("the background flush of %s died: %r", self._where, task.exception())

    async def _load(self) -> None:
        """Load or create the session and write it at once, as the seed's getOrCreateSession."""
        now = self._clock()
        self._writer.start(now)
        self._pending.active_at = now  # opening marks the session active, so it writes
        await self._writer.commit(Mode.NEW if self._force_new else Mode.MERGE, opening=True)

    async def _flush_periodically(self) -> None:
        while True:
            await anyio.sleep(self._flush_interval)
            try:
                await self._writer.commit(Mode.MERGE)
            except Exception as exc:
                logger.warning(
                    "background flush of %s failed, will retry in %s s: %s",
                    self._where,
                    self._flush_interval,
                    exc,
                )

    async def _bounded_flush(self, patience: float, *, on_signal: bool = False) -> bool:
        """Flush within ``patience`` seconds, cancellation or not; False if the time ran out.

        What follows a flush that gave up differs: after a close, the exit hook waits for it
        once more; after a signal, the signal takes its course at once (by default the
        process dies of it, and no exit hook runs).
        """
        with anyio.CancelScope(shield=True), anyio.move_on_after(patience) as timer:
            await self._writer.commit(Mode.MERGE)
        if timer.cancelled_caught:
            logger.error(
                "flushing %s on a signal took longer than %s s; stopped waiting: the signal "
                "takes its course, and the write goes on in the background only while the "
                "process lives"
                if on_signal
                else "flushing %s took longer than %s s; stopped waiting: the write goes on in "
                "the background, and the exit hook waits for it once more",
                self._where,
                round(patience, 3),
            )
            return False
        return True

    async def _flush_on_signal(self, patience: float) -> bool:
        return await self._bounded_flush(patience, on_signal=True)

    def _unsaved(self) -> str | None:
        """The counts not known to be stored, as a log line names them; None when there are
        none. A write under way counts: a task may have started one after the signal's flush
        returned, and the process must not die of the signal before it lands."""
        return None if self._writer.settled() else self._writer.unsaved()

    def _flush_sync(self) -> None:
        """Flush without an event loop: at interpreter exit, or on a signal once it is gone."""
        self._writer.commit_sync(self._close_timeout)

    def _detach(self) -> None:
        """In a forked child: drop the parent's pending counts and refuse further use."""
        self._open = False
        self._pending.clear()

    # -- the session -----------------------------------------------------------------------

    @property
    def session(self) -> Session:
        """The session as it stands, pending counts included (no I/O)."""
        self._check_open()
        return self._writer.session()

    @property
    def session_id(self) -> str:
        """The current session id; still readable after the store is closed."""
        record = self._writer.record
        if record is None:
            raise StoreClosedError(f"the session store for {self._where} was never opened")
        return record.session.session_id

    # -- the hot path: memory only ---------------------------------------------------------
    # ``_lock`` serializes updates of the pending counts, and no holder ever awaits while
    # holding it, so a task that runs finds it free unless someone took it across an await.
    # An update is synchronous: made while the lock is free, it is as serialized as if it had
    # taken and released the lock, without the ``acquire()`` coroutine that costs more than
    # the update itself. Only a lock that is held is waited for (``_lock_freed``). No
    # allocation and no formatting: the time stays a float until a write needs it.

    async def increment_tool_calls(self, count: int = 1) -> None:
        """Count ``count`` tool calls."""
        if self._lock.locked():
            await self._lock_freed()
        self._add(TOOL_CALLS, count)

    async def increment_prompt_calls(self, count: int = 1) -> None:
        """Count ``count`` prompt calls."""
        if self._lock.locked():
            await self._lock_freed()
        self._add(PROMPT_CALLS, count)

    async def increment_errors(self, count: int = 1) -> None:
        """Count ``count`` errors."""
        if self._lock.locked():
            await self._lock_freed()
        self._add(ERRORS, count)

    async def increment_rate_limits(self, count: int = 1) -> None:
        """Count ``count`` rate limits."""
        if self._lock.locked():
            await self._lock_freed()
        self._add(RATE_LIMITS, count)

    def _add(self, counter: int, count: int) -> None:
        """Check and add one count: synchronous, so as serialized as under ``_lock``."""
        if type(count) is not int or count < 0 or not self._open:
            self._reject(count)
        now = self._clock()  # first: a clock that raises must leave nothing counted
        pending = self._pending
        pending.counts[counter] += count
        pending.active_at = now

    async def _lock_freed(self) -> None:
        """Wait for ``_lock`` (in turn, as ``acquire()`` queues), and give it back at once.

        Until its caller next awaits, no task holds the lock: one that was waiting for it is
        only woken, and takes it when it runs. A task cancelled while waiting here raises
        CancelledError, and has counted nothing.
        """
        await self._lock.acquire()
        self._lock.release()

    async def update_stats(
        self, *, tool_calls: int = 0, prompt_calls: int = 0, errors: int = 0, rate_limits: int = 0
    ) -> None:
        """Add to several counters at once."""
        for count in (tool_calls, prompt_calls, errors, rate_limits):
            if type(count) is not int or count < 0 or not self._open:
                self._reject(count)
        async with self._lock:
            now = self._clock()
            stats = SessionStats(tool_calls, prompt_calls, errors, rate_limits)
            self._pending.add(Counts(stats), now)

    def tool_call(
        self,
        name: str,
        *,
        client: str | None = None,
        rate_limit_errors: tuple[type[BaseException], ...] | None = None,
    ) -> ToolCall:
        """Count a call of tool ``name``, and its error or rate limit, and time it.

        ``async with store.tool_call("search"): ...``, or as a decorator. ``client`` is the
        calling MCP client's name, counted per client; ``rate_limit_errors`` overrides the
        store's for this call. A name the file cannot keep is a ValueError here.
        """
        return ToolCall(
            self._counting,
            TOOL_CALLS,
            check_name(name),
            None if client is None else client_name(client),
            self.rate_limit_errors if rate_limit_errors is None else rate_limit_errors,
        )

    def prompt_call(
        self,
        name: str,
        *,
        client: str | None = None,
        rate_limit_errors: tuple[type[BaseException], ...] | None = None,
    ) -> ToolCall:
        """As ``tool_call``, for a prompt: counts a prompt call, kept per prompt."""
        return ToolCall(
            self._counting,
            PROMPT_CALLS,
            check_name(name, "prompt"),
            None if client is None else client_name(client),
            self.rate_limit_errors if rate_limit_errors is None else rate_limit_errors,
        )

    def _call_started(self, kind: int, name: str, client: str | None) -> Awaitable[None] | None:
        """Count the start of a call at once; or, while ``_lock`` is held, return what counts
        it once the lock is free (see the hot path above)."""
        if self._lock.locked():
            return self._call_started_later(kind, name, client)
        if not self._open:
            self._check_open()
        now = self._clock()  # first: a clock that raises must leave nothing counted
        pending = self._pending
        pending.counts[kind] += 1
        calls = (pending.tools if kind == TOOL_CALLS else pending.prompts).get(name)
        if calls is None:
            calls = self._calls_of(kind, name)
        calls.calls += 1
        if client is not None:
            pending.client(client)[0 if kind == TOOL_CALLS else 1] += 1
        pending.active_at = now
        return None

    async def _call_started_later(self, kind: int, name: str, client: str | None) -> None:
        await self._lock_freed()
        counted = self._call_started(kind, name, client)  # the lock is free: counted at once
        assert counted is None

    def _calls_of(self, kind: int, name: str) -> Calls:
        """The pending calls of a tool or prompt; one the session already keeps is never
        counted under OTHER, however many other names are pending."""
        pending = self._pending
        assert self._writer.record is not None
        session = self._writer.record.session
        if kind == TOOL_CALLS:
            return pending.calls(pending.tools, name, keep=name in session.tools)
        return pending.calls(pending.prompts, name, keep=name in session.prompts)

    def _call_finished(self, kind: int, name: str, elapsed_ms: float, outcome: Outcome) -> None:
        """Record how a call ended; synchronous, so that a cancelled call is timed too.

        It needs no lock: no holder of ``_lock`` ever awaits while holding it, so no task can
        run this while it is held.
        """
        if not self._open:
            return  # the store closed while the call ran: its start was counted, no more
        try:
            now = self._clock()
        except Exception as exc:  # the call's start is counted; its end must be too
            logger.warning("the clock raised %r; using the system's time", exc)
            now = time.time()
        pending = self._pending
        calls = (pending.tools if kind == TOOL_CALLS else pending.prompts).get(name)
        if calls is None:  # a name past the cap, or one whose start a flush took
            calls = self._calls_of(kind, name)
        if outcome == "error":
            pending.counts[ERRORS] += 1
            calls.errors += 1
        elif outcome == "rate_limit":
            pending.counts[RATE_LIMITS] += 1
            calls.rate_limits += 1
        calls.timed(elapsed_ms)
        pending.active_at = now

    def _reject(self, count: object) -> None:
        self._check_open()
        if type(count) is not int:
            raise TypeError(f"count must be an int, not {type(count).__name__}")
        raise ValueError(f"count must not be negative, got {count}")

    # -- writes to disk --------------------------------------------------------------------

    async def flush(self) -> None:
        """Merge the pending counts into the stored session; durable when it returns."""
        self._check_open()
        await self._writer.commit(Mode.MERGE)

    async def reset_stats(self) -> Session:
        """Zero the counters on disk and here, keeping the session id; written at once."""
        self._check_open()
        await self._writer.commit(Mode.RESET)
        return self.session

    async def new_session(self) -> Session:
        """Start a new session id with zero counters; written at once."""
        self._check_open()
        await self._writer.commit(Mode.NEW)
        return self.session

    async def delete(self) -> bool:
        """Delete the stored session and drop the pending counts; True if there was one.

        Nothing is written again until the next change, which starts a new session.
        """
        self._check_open()
        return await self._writer.delete()

    def _check_open(self) -> None:
        if not self._open:
            raise StoreClosedError(f"the session store for {self._where} is not open")


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if math.isnan(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value}")
    return float(value)
