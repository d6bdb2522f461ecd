"""The store's own thread: one daemon thread that runs the store's file transactions in order.

It is a ``concurrent.futures.Executor``, so aiofiles runs the transactions on it, and it differs
from a one-thread ``ThreadPoolExecutor`` in the two ways that shutdown needs:

- Work once submitted always runs. A pool's future can be cancelled before its work starts,
  so whether a transaction ran would depend on the fate of whoever awaited it; here it never
  does, and the transaction's own outcome is the one truth about it.
- Interpreter exit does not wait for the thread. A pool's threads are joined at exit, which
  hangs a process whose disk is stuck; the store bounds its own waits instead.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from functools import partial
from typing import Any, TypeVar

__all__ = ("WorkerThread",)

_T = TypeVar("_T")

_Work = tuple["Future[Any]", Callable[[], Any]]


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
        with self._mutex:
            self._queue.put((future, partial(fn, *args, **kwargs)))
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._thread.start()
        return future

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
                future.set_exception(exc)
            else:
                future.set_result(result)
            del item, future, call  # hold no result or traceback while idle
