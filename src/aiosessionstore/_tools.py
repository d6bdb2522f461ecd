"""``store.tool_call(name)``: count a tool call, its outcome and its time, in one line."""

from __future__ import annotations

import time
from contextlib import AsyncContextDecorator
from types import TracebackType
from typing import TYPE_CHECKING, Literal

from ._names import check_name

if TYPE_CHECKING:
    from typing_extensions import Self

    from ._store import AsyncSessionStore

__all__ = ("Outcome", "ToolCall")

Outcome = Literal["ok", "error", "rate_limit", "cancelled"]


class ToolCall(AsyncContextDecorator):
    """Counts one call of a tool: when it starts, then how it ended and how long it took.

    A call is counted when it starts. An exception counts an error, or a rate limit when it is
    one of the rate-limit exception types, and is re-raised; a cancelled call is no error.
    Usable as ``async with store.tool_call("search"):`` or as ``@store.tool_call("search")``.
    """

    def __init__(
        self,
        store: AsyncSessionStore,
        name: str,
        rate_limit_errors: tuple[type[BaseException], ...],
    ) -> None:
        self._store = store
        self._name = check_name(name)
        self._rate_limit_errors = rate_limit_errors
        self._started = 0.0

    def _recreate_cm(self) -> Self:
        # As a decorator, each call gets its own timer: calls may overlap.
        return type(self)(self._store, self._name, self._rate_limit_errors)

    async def __aenter__(self) -> Self:
        await self._store._tool_started(self._name)
        self._started = time.perf_counter()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        elapsed_ms = (time.perf_counter() - self._started) * 1000
        outcome: Outcome
        if exc is None:
            outcome = "ok"
        elif isinstance(exc, self._rate_limit_errors):
            outcome = "rate_limit"
        elif isinstance(exc, Exception):
            outcome = "error"
        else:
            outcome = "cancelled"  # CancelledError, KeyboardInterrupt: not the tool's fault
        self._store._tool_finished(self._name, elapsed_ms, outcome)
