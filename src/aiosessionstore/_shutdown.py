"""How open stores outlive their process's end: SIGTERM and SIGHUP, interpreter exit, fork.

The module state is what is one per process: the registry of open stores, which the exit
and fork hooks need, and the signal handlers, which all open stores share.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import warnings
from collections.abc import Awaitable, Callable, Iterator
from types import FrameType
from typing import NamedTuple

__all__ = ("SignalHub", "protect", "signal_hub")

logger = logging.getLogger("aiosessionstore")

#: The most flushes a signal makes: the counts pending when it came, those counted while
#: the first flush waited (for the lock, say), and those counted during the second. Past
#: that the app is still busy counting, and waiting on would meet the SIGKILL that follows.
ROUNDS = 3

#: The signals a service manager or an MCP client sends to end a server.
SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)

_Handler = Callable[[int, FrameType | None], object] | int | None


class _Guard(NamedTuple):
    """What the exit and fork hooks need of one open store."""

    owner: object  # the store: held, so that an unclosed store lives to exit
    is_open: Callable[[], bool]
    flush_sync: Callable[[], None]
    detach: Callable[[], None]


_guards: dict[int, _Guard] = {}  # id -> guard, for the exit and fork hooks
_hooks_installed = False


def protect(
    owner: object,
    *,
    flush: Callable[[float], Awaitable[bool]],
    flush_sync: Callable[[], None],
    unsaved: Callable[[], str | None],
    patience: float,
    detach: Callable[[], None],
    is_open: Callable[[], bool],
    signals: bool,
) -> contextlib.ExitStack:
    """Make the end of the process save an open store's counts, all in one place.

    The exit hook flushes it if it was never closed; a forked child drops its copy of the
    parent's counts instead; SIGTERM and SIGHUP (with ``signals``, from the main thread)
    flush it (``flush(patience)``: whether it was done in time), again while ``unsaved()``
    names counts still pending (see ``SignalHub._flush_then_chain``), before the signal does
    what it would have done. Closing the returned stack, once the counts are stored, undoes
    all of it.
    """
    pid = os.getpid()

    def flush_here() -> None:
        if os.getpid() == pid:  # in a forked child, the counts are the parent's
            flush_sync()

    guard = _Guard(owner, is_open, flush_here, detach)
    stack = contextlib.ExitStack()
    _register(guard)
    stack.callback(_guards.pop, id(guard), None)
    if signals and signal_hub.available():
        signal_hub.add(
            guard, _Entry(asyncio.get_running_loop(), flush, flush_here, unsaved, patience)
        )
        stack.callback(signal_hub.discard, guard)
    return stack


def _register(guard: _Guard) -> None:
    global _hooks_installed
    if not _hooks_installed:
        atexit.register(_flush_at_exit)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_detach_in_child)
        _hooks_installed = True
    _guards[id(guard)] = guard


def _flush_at_exit() -> None:
    """Last chance for a store that was never closed, or whose loop stopped: flush in sync."""
    with _ctrl_c_deferred():
        for guard in list(_guards.values()):
            if guard.is_open():
                warnings.warn(
                    f"{guard.owner!r} was never closed; flushing it at interpreter exit",
                    ResourceWarning,
                    stacklevel=1,
                )
                logger.warning("%r was never closed; flushing it at interpreter exit", guard.owner)
            guard.flush_sync()
        _guards.clear()


@contextlib.contextmanager
def _ctrl_c_deferred() -> Iterator[None]:
    """Hold off Ctrl-C while the exit hook flushes, which is bounded by ``close_timeout``,
    then hand it to the app's own handler, if it set one.

    A KeyboardInterrupt raised inside the flush (a second Ctrl-C at an app already shutting
    down, say) would drop counts that are about to land, and the process is ending anyway:
    with Python's own handler, the interrupt has nothing left to do.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[FrameType | None] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        logger.warning("Ctrl-C at exit: the exit flush ends first (it waits at most close_timeout)")
        caught.append(frame)

    try:
        previous = signal.signal(signal.SIGINT, hold)
    except (ValueError, OSError):  # no SIGINT here, or handlers cannot be set
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
        if caught and callable(previous) and previous is not signal.default_int_handler:
            previous(signal.SIGINT, caught[0])


def _detach_in_child() -> None:
    """In a forked child the parent's pending counts are the parent's to flush, not ours."""
    for guard in list(_guards.values()):
        guard.detach()
    _guards.clear()
    signal_hub.forget_all()


def _drain(reader: socket.socket) -> bytes:
    """The signal numbers the wakeup fd wrote, a byte each."""
    received = b""
    with contextlib.suppress(OSError):
        while chunk := reader.recv(512):
            received += chunk
    return received


class _Entry(NamedTuple):
    """What a signal needs of one open store."""

    loop: asyncio.AbstractEventLoop
    flush: Callable[[float], Awaitable[bool]]
    flush_sync: Callable[[], None]
    unsaved: Callable[[], str | None]
    patience: float


class SignalHub:
    """One handler per signal for every open store: flush them all, then let the signal do
    what it would have done without us.

    One handler, not one per store, so that stores may close in any order: the handlers
    that were there before the first store opened are back once the last one closes.

    A Python signal handler runs between two bytecodes, possibly in the middle of a flush
    while the file lock is held, so the handler never flushes itself: it wakes the event loop,
    the loop flushes, and then the previous handler runs, or, if there was none, the process
    dies of the signal as it would have. Stores whose loop is not running flush synchronously.
    A handler set after ours is left alone, and its signals are flushed for all the same.
    """

    def __init__(self) -> None:
        self._entries: dict[int, _Entry] = {}  # id(store) -> its loop and flushes
        self._previous: dict[int, _Handler] = {}
        self._flushing = False
        #: The loop a signal's flush was handed to, until that flush is done.
        self._flushing_on: asyncio.AbstractEventLoop | None = None
        #: The signals to pass on once the flush is done, in the order they came: those our
        #: handler caught (one caught by another, see ``_woken``, has been passed on).
        self._chain_to: list[int] = []
        self._task: asyncio.Task[None] | None = None
        self._wakeup: tuple[asyncio.AbstractEventLoop, socket.socket, socket.socket] | None = None

    @staticmethod
    def available() -> bool:
        """Handlers can only be set from the main thread, and only where the signals exist."""
        return bool(SIGNALS) and threading.current_thread() is threading.main_thread()

    def add(self, store: object, entry: _Entry) -> None:
        """Flush ``store`` on SIGTERM and SIGHUP from now on; call from its running loop."""
        if not self._entries:
            self._install(entry.loop)
        self._entries[id(store)] = entry

    def discard(self, store: object) -> None:
        """Stop flushing ``store``; the last one out puts the previous handlers back."""
        if self._entries.pop(id(store), None) is not None and not self._entries:
            self._restore()

    def forget_all(self) -> None:
        """In a forked child: the stores and their loop are the parent's; only chain.

        The loop is not touched: the child shares its epoll instance with the parent, so
        removing our reader there would stop the parent's loop waking on signals.
        """
        self._entries.clear()
        self._flushing = False
        self._chain_to = []
        self._close_wakeup(loop_is_ours=False)

    def _install(self, loop: asyncio.AbstractEventLoop) -> None:
        for signum in SIGNALS:
            current = signal.getsignal(signum)
            # Ours already (a forked child, or an app that saved ours and put it back): the
            # handler from before us is still the one recorded, and chaining to ourselves
            # would swallow the signal.
            if current != self._handle:
                self._previous[signum] = current
            signal.signal(signum, self._handle)
        if sys.platform != "win32":
            self._wake_loop_on_signals(loop)

    def _restore(self) -> None:
        """Put back the handlers we replaced, unless the app has since replaced ours."""
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) == self._handle:
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._close_wakeup()

    def _wake_loop_on_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make a signal wake the event loop, whichever thread the kernel delivers it to.

        Only the main thread runs Python signal handlers, and only between two bytecodes: a
        signal taken by another thread (the store's own, a thread pool's) would otherwise wait
        until the loop, asleep in select(), woke for some other reason. asyncio does the same
        for ``loop.add_signal_handler``; if a wakeup fd is already set, the loop already wakes.
        """
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        if previous != -1:
            signal.set_wakeup_fd(previous)
            reader.close()
            writer.close()
            return
        self._wakeup = loop, reader, writer
        loop.add_reader(reader, self._woken, reader)

    def _woken(self, reader: socket.socket) -> None:
        """The loop woke for signals: flush for one of ours that another handler caught.

        A handler set after ours takes the signal from us, and is left alone: uvicorn's,
        which FastMCP starts after its lifespan opened the store, waits for every open
        connection to close before the server stops and the store flushes, and a SIGKILL may
        come first. The wakeup fd is written for every signal that has a Python handler,
        whichever, so a signal of ours is flushed here, and not passed on: its handler had it.
        """
        for signum in _drain(reader):
            if signum in SIGNALS and signal.getsignal(signum) != self._handle:
                self._respond(signum, None, chain=False)

    def _close_wakeup(self, loop_is_ours: bool = True) -> None:
        if self._wakeup is None:
            return
        loop, reader, writer = self._wakeup
        try:
            current = signal.set_wakeup_fd(-1)
        except ValueError:
            # Not the main thread: keep the sockets open, or a signal would write into
            # whatever file reuses the descriptor.
            return
        if current != writer.fileno():
            signal.set_wakeup_fd(current)  # not ours any more: someone else's to keep
        if loop_is_ours and not loop.is_closed():
            loop.remove_reader(reader)
        self._wakeup = None
        reader.close()
        writer.close()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self._respond(signum, frame, chain=True)

    def _respond(self, signum: int, frame: FrameType | None, *, chain: bool) -> None:
        """Flush every open store, then, with ``chain``, pass the signal on."""
        loop = self._flushing_on
        if self._flushing and (loop is None or loop.is_running()):
            if chain and signum not in self._chain_to:  # a flush for an earlier signal is
                self._chain_to.append(signum)  # under way: it passes this one on when done
            return
        # Not flushing, or the loop that was to flush stopped before it could: act now.
        self._flushing = True
        self._flushing_on = None
        self._chain_to = [signum] if chain else []
        entries = list(self._entries.values())
        for entry in entries:
            if not entry.loop.is_running():
                entry.flush_sync()  # its loop is gone: nothing else will flush it
        # Handlers run in the main thread, which runs at most one loop: the stores' own.
        running = [entry for entry in entries if entry.loop.is_running()]
        if running:
            loop = running[0].loop
            self._flushing_on = loop
            loop.call_soon_threadsafe(self._start_flush, signum, running)
            return
        self._flushing = False
        if chain:
            self._chain(signum, frame)

    def _start_flush(self, signum: int, entries: list[_Entry]) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._flush_then_chain(signum, entries))

    async def _flush_then_chain(self, signum: int, entries: list[_Entry]) -> None:
        """Flush, and flush again what tasks counted meanwhile: at most ROUNDS flushes, in
        the stores' patience. The last look at what is pending and the chain are one step
        of the loop, so no count slips in between them unsaid."""
        name = signal.Signals(signum).name
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(entry.patience for entry in entries)
        try:
            for round_ in range(1, ROUNDS + 1):
                remaining = max(deadline - loop.time(), 0.0)
                outcomes = await asyncio.gather(
                    *(entry.flush(remaining) for entry in entries), return_exceptions=True
                )
                for outcome in outcomes:
                    if isinstance(outcome, Exception):
                        logger.error("flush on signal %s failed: %s", name, outcome)
                again = [
                    entry
                    for entry, outcome in zip(entries, outcomes, strict=True)
                    if outcome is True and entry.unsaved() is not None
                ]
                if not again or round_ == ROUNDS or loop.time() >= deadline:
                    break
                entries = again
            for entry in entries:  # those flushed last: a failed flush keeps its counts
                unsaved = entry.unsaved()
                if unsaved is not None:
                    logger.error("counts not saved before signal %s: %s", name, unsaved)
        finally:
            self._flushing = False
            self._flushing_on = None
        chain_to, self._chain_to = self._chain_to, []
        for each in chain_to:  # as they would have acted without us, unless one ends us
            self._chain(each, None)

    def _chain(self, signum: int, frame: FrameType | None) -> None:
        previous = self._previous.get(signum, signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            # The default action: die of this signal, so the parent sees -SIGTERM, not 0.
            signal.signal(signum, signal.SIG_DFL)
            sys.stderr.flush()
            os.kill(os.getpid(), signum)


#: The process's one set of handlers, shared by every store that handles signals.
signal_hub = SignalHub()
