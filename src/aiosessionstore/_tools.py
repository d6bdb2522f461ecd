"""``store.tool_call(name)`` and ``store.prompt_call(name)``: a call, its outcome, its time.

A ToolCall knows nothing of the store: the store hands it the two functions that count a
start and an end, so the counting stays in one place and no import runs back to the store.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:
    from typing_extensions import ParamSpec, Self

    _P = ParamSpec("_P")

__all__ = ("Outcome", "ToolCall", "is_rate_limit")

Outcome = Literal["ok", "error", "rate_limit", "cancelled"]
_T = TypeVar("_T")


def is_rate_limit(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> bool:
    """Whether ``exc``, or an exception it was raised from or while handling, is one of
    ``kinds``: frameworks wrap a tool's exception (FastMCP in ToolError) before we see it."""
    if not kinds:
        return False
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kinds):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


class ToolCall:
    """Counts one call of a tool or prompt: when it starts, then how it ended and how long.

    A call is counted when it starts. An exception counts an error, or a rate limit when it
    or one in its ``__cause__``/``__context__`` chain is one of the rate-limit exception
    types, and is re-raised; a cancelled call is no error. ``mark_error()`` counts an error
    with nothing raised, as for a result that reports one. Usable as
    ``async with store.tool_call("search"):`` or as ``@store.tool_call("search")``.
    """

    __slots__ = ("_error", "_finished", "_rate_limit_errors", "_start", "_started")

    def __init__(
        self,
        start: Callable[[], Awaitable[None]],
        finished: Callable[[float, Outcome], None],
        rate_limit_errors: tuple[type[BaseException], ...],
    ) -> None:
        self._start = start
        self._finished = finished
        self._rate_limit_errors = rate_limit_errors
        self._started = 0.0
        self._error = False

    def mark_error(self) -> None:
        """Count this call as an error even though it raises nothing (an ``is_error`` result)."""
        self._error = True

    def __call__(
        self, function: Callable[_P, Coroutine[Any, Any, _T]]
    ) -> Callable[_P, Coroutine[Any, Any, _T]]:
        """As a decorator: each call of ``function`` is counted, with a timer of its own."""

        @functools.wraps(function)
        async def counted(*args: _P.args, **kwargs: _P.kwargs) -> _T:
            async with ToolCall(self._start, self._finished, self._rate_limit_errors):
                return await function(*args, **kwargs)

        return counted

    async def __aenter__(self) -> Self:
        await self._start()
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
            outcome = "error" if self._error else "ok"
        elif is_rate_limit(exc, self._rate_limit_errors):
            outcome = "rate_limit"
        elif isinstance(exc, Exception):
            outcome = "error"
        else:
            outcome = "cancelled"  # CancelledError, KeyboardInterrupt: not the tool's fault
        self._finished(elapsed_ms, outcome)
