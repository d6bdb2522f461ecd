"""The store's own thread, and the one hop a write makes to it and back."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from aiosessionstore import AsyncSessionStore
from aiosessionstore._worker import WorkerThread


def test_a_call_runs_in_order_with_submitted_work() -> None:
    """``call`` queues behind what was submitted before it, and before what comes after."""
    worker = WorkerThread("test")
    ran: list[str] = []
    done = threading.Event()
    first = worker.submit(ran.append, "submitted")
    worker.call(lambda: ran.append("called"))
    last = worker.submit(ran.append, "after")
    worker.call(done.set)
    assert done.wait(10)
    assert first.result() is None
    assert last.result() is None
    assert ran == ["submitted", "called", "after"]
    worker.shutdown()


def test_a_call_that_raises_is_logged_and_the_thread_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A call has no future to raise to: its exception is logged, and later work still runs."""

    def fails() -> None:
        raise RuntimeError("boom")

    worker = WorkerThread("test")
    worker.call(fails)
    with caplog.at_level(logging.ERROR, logger="aiosessionstore"):
        assert worker.submit(lambda: 42).result(timeout=10) == 42
    assert "boom" in caplog.text
    worker.shutdown()


@pytest.mark.anyio
async def test_a_flush_wakes_the_loop_once(session_path: Path) -> None:
    """The store's thread wakes the loop once per write, to settle it and end the wait; the
    write's result takes no second trip through a future of its own."""
    loop = asyncio.get_running_loop()
    wakes: list[Any] = []
    real = loop.call_soon_threadsafe

    def counted(callback: Any, *args: Any, context: Any = None) -> asyncio.Handle:
        wakes.append(callback)
        return real(callback, *args, context=context)

    async with AsyncSessionStore(session_path, handle_signals=False) as store:
        loop.call_soon_threadsafe = counted  # type: ignore[method-assign,assignment]
        try:
            for _ in range(3):
                await store.increment_tool_calls()
                await store.flush()
        finally:
            del loop.call_soon_threadsafe
    assert len(wakes) == 3
