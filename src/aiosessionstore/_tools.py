"""``store.tool_call(name)`` and ``store.prompt_call(name)``: a call, its outcome, its time.

A ToolCall knows nothing of the store: the store hands it a ``Counting`` (the two callbacks
that count a start and an end), so the counting stays in one place and no import runs back
to the store.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine
from time import perf_counter
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeVar

if TYPE_CHECKING:
    from typing_extensions import ParamSpec, Self

    _P = ParamSpec("_P")

__all__ = ("Counting", "Outcome", "ToolCall", "is_rate_limit")

Outcome = Literal["ok", "error", "rate_limit", "cancelled"]
_T = TypeVar("_T")


class Counting(NamedTuple):
    """How a ToolCall counts: two callbacks a store makes once, ``kind`` telling tools from
    prompts."""

    #: Count a start at once, or return what counts it once it may (to be awaited).
    started: Callable[[int, str, str | None], Awaitable[None] | None]
    #: Count how a call ended (its kind, name, milliseconds and outcome).
    finished: Callable[[int, str, float, Outcome], None]


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

    __slots__ = (
        "_client",
        "_counting",
        "_error",
        "_kind",
        "_name",
        "_rate_limit_errors",
        "_started",
    )

    def __init__(
        self,
        counting: Counting,
        kind: int,
        name: str,
        client: str | None,
        rate_limit_errors: tuple[type[BaseException], ...],
    ) -> None:
        self._counting = counting
        self._kind = kind
        self._name = name
        self._client = client
        self._rate_limit_errors = rate_limit_errors
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
            call = ToolCall(
                self._counting, self._kind, self._name, self._client, self._rate_limit_errors
            )
            async with call:
                return await function(*args, **kwargs)

        return counted

    async def __aenter__(self) -> Self:
        waiting = self._counting.started(self._kind, self._name, self._client)
        if waiting is not None:
            await waiting
        self._started = perf_counter()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        elapsed_ms = (perf_counter() - self._started) * 1000
        outcome: Outcome
        if exc is None:
            outcome = "error" if self._error else "ok"
        elif is_rate_limit(exc, self._rate_limit_errors):
            outcome = "rate_limit"
        elif isinstance(exc, Exception):
            outcome = "error"
        else:
            outcome = "cancelled"  # CancelledError, KeyboardInterrupt: not the tool's fault
        self._counting.finished(self._kind, self._name, elapsed_ms, outcome)
