"""The store's own thread: one daemon thread that runs the store's file transactions in order.

It is a ``concurrent.futures.Executor``, and it differs from a one-thread
``ThreadPoolExecutor`` in the two ways that shutdown needs:

- Work once submitted always runs. A pool's future can be cancelled before its work starts,
  so whether a transaction ran would depend on the fate of whoever awaited it; here it never
  does, and the transaction's own outcome is the one truth about it.
- Interpreter exit does not wait for the thread. A pool's threads are joined at exit, which
  hangs a process whose disk is stuck; the store bounds its own waits instead.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from functools import partial
from typing import Any, TypeVar

__all__ = ("WorkerThread",)

logger = logging.getLogger("aiosessionstore")

_T = TypeVar("_T")

#: A call, and the future of its outcome; None for a call that reports its own outcome.
_Work = tuple["Future[Any] | None", Callable[[], Any]]


class WorkerThread(Executor):
    """A FIFO of work run by one daemon thread, which starts on demand and ends once shut down."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._queue: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._mutex = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Future[_T]:
        future: Future[_T] = Future()
        future.set_running_or_notify_cancel()  # from now on cancel() refuses: the work will run
        self._put((future, partial(fn, *args, **kwargs)))
        return future

    def call(self, call: Callable[[], None]) -> None:
        """Run ``call`` on the thread after the work submitted before it, with no future: it
        reports its outcome itself (a future costs a lock, a condition and a callback more)."""
        self._put((None, call))

    def _put(self, work: _Work) -> None:
        with self._mutex:
            self._queue.put(work)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._thread.start()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Let the thread end once the work already submitted is done; more work restarts it."""
        with self._mutex:
            thread = self._thread
            if thread is not None:
                self._queue.put(None)
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                with self._mutex:
                    if self._queue.empty():  # else work came after the shutdown: do it
                        self._thread = None
                        return
                continue
            future, call = item
            try:
                result = call()
            except BaseException as exc:  # the submitter's to handle, as in any executor
                if future is None:
                    logger.error("the store's thread: %r raised", call, exc_info=exc)
                else:
                    future.set_exception(exc)
            else:
                if future is not None:
                    future.set_result(result)
            del item, future, call  # hold no result or traceback while idle
