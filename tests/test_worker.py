"""The store's own thread, and the one hop a write makes to it and back."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from aiosessionstore import AsyncSessionStore


@pytest.mark.anyio
async def test_a_flush_wakes_the_loop_once(session_path: Path) -> None:
    """The store's thread wakes the loop once per write, to end the wait that settles it, and
    not a second time to settle it."""
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
