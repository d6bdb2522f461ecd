"""Counting a FastMCP server's calls: a middleware the lifespan adds, and removes after.

Imported only for a FastMCP server, that is when fastmcp is already imported.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable
from contextvars import ContextVar
from typing import Any, TypeVar

from fastmcp.server.middleware import Middleware  # type: ignore[import-not-found, unused-ignore]

from ._mcp_count import CallCounter, client_info_name

__all__ = ("install_middleware",)

_R = TypeVar("_R")

#: Set while a counted call runs: a call made under it is the server's own code calling
#: (``await server.call_tool(...)`` in a tool), which FastMCP hands the caller's context.
_in_a_call: ContextVar[bool] = ContextVar("aiosessionstore_in_a_call", default=False)


class _CountingMiddleware(Middleware):  # type: ignore[misc, unused-ignore]
    """Counts each ``tools/call`` and ``prompts/get`` as it passes, with how it ended.

    FastMCP raises a tool's exception as the ``__cause__`` of a ToolError (an unknown tool as
    NotFoundError, bad arguments as ValidationError) through its middleware, so the store
    sees what failed, and which failures were rate limits.
    """

    def __init__(self, counter: CallCounter) -> None:
        self._counter = counter

    async def on_call_tool(self, context: Any, call_next: Any) -> Any:
        call = functools.partial(call_next, context)
        return await _own(self._counter.tool_call(context.message.name, _client(context), call))

    async def on_get_prompt(self, context: Any, call_next: Any) -> Any:
        call = functools.partial(call_next, context)
        return await _own(self._counter.prompt_call(context.message.name, _client(context), call))


async def _own(counted: Awaitable[_R]) -> _R:
    """Await ``counted`` with the calls it makes marked as the server's own."""
    token = _in_a_call.set(True)
    try:
        return await counted
    finally:
        _in_a_call.reset(token)


def _client(context: Any) -> str | None:
    """The calling client's name; None for a call made from code: with no session, or from
    within a call (where FastMCP passes on the calling request's session)."""
    if _in_a_call.get():
        return None
    try:
        params = context.fastmcp_context.session.client_params
    except (AttributeError, RuntimeError):  # RuntimeError: no session is available
        return None
    return client_info_name(params)


def install_middleware(server: Any) -> CallCounter:
    """Put the counting first in the server's middleware, so that it sees every call, also
    those another middleware refuses (a rate limiter, an authorization check)."""

    async def tool(name: str) -> list[str]:
        return [name] if await server.get_tool(name) is not None else []

    async def prompt(name: str) -> list[str]:
        return [name] if await server.get_prompt(name) is not None else []

    counter = CallCounter(tool, prompt)
    middleware = _CountingMiddleware(counter)
    server.middleware.insert(0, middleware)

    def remove() -> None:
        if middleware in server.middleware:
            server.middleware.remove(middleware)

    counter.remove = remove
    return counter
