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

#: The client session of the counted call running, while it runs: a call made under it with
#: that same session is the server's own code calling (``await server.call_tool(...)`` in a
#: tool), to which FastMCP hands the calling request's context. A client's call, even one
#: made from within a call (an in-memory client of another server), has a session of its own.
_calling: ContextVar[object] = ContextVar("aiosessionstore_calling", default=None)


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
        session = _session(context)
        counted = self._counter.tool_call(context.message.name, _client(session), call)
        return await _calling_with(session, counted)

    async def on_get_prompt(self, context: Any, call_next: Any) -> Any:
        call = functools.partial(call_next, context)
        session = _session(context)
        counted = self._counter.prompt_call(context.message.name, _client(session), call)
        return await _calling_with(session, counted)


async def _calling_with(session: object, counted: Awaitable[_R]) -> _R:
    """Await ``counted``, a call from ``session``: calls made under it with that session are
    the server's own."""
    token = _calling.set(session)
    try:
        return await counted
    finally:
        _calling.reset(token)


def _session(context: Any) -> object:
    """The client session a call came with; None where there is none (a call from code)."""
    try:
        return context.fastmcp_context.session
    except (AttributeError, RuntimeError):  # RuntimeError: no session is available
        return None


def _client(session: Any) -> str | None:
    """The calling client's name; None for a call made from code: with no session, or with
    that of the call it is made within."""
    if session is None or session is _calling.get():
        return None
    try:
        params = session.client_params
    except AttributeError:
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
