"""Counting a FastMCP server's calls: a middleware the lifespan adds, and removes after.

Imported only for a FastMCP server, that is when fastmcp is already imported.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable
from contextvars import ContextVar
from typing import Any, NamedTuple, TypeVar

from fastmcp.server.middleware import Middleware  # type: ignore[import-not-found, unused-ignore]

from ._mcp_count import CallCounter, client_info_name

__all__ = ("install_middleware",)

_R = TypeVar("_R")


class _Calling(NamedTuple):
    """The counted call running, while it runs (see ``_CountingMiddleware._entered``)."""

    #: Its client session: FastMCP hands it on to ``await server.call_tool(...)`` in a tool.
    session: object
    #: The counting middlewares it has passed, outermost first (a mounted server's after its
    #: parent's, for one and the same call).
    counted_by: tuple[object, ...]
    #: Whether it is the server's own code calling, counted with no client.
    own: bool


_calling: ContextVar[_Calling | None] = ContextVar("aiosessionstore_calling", default=None)


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
        client, calling = self._entered(context)
        return await _within(calling, self._counter.tool_call(context.message.name, client, call))

    async def on_get_prompt(self, context: Any, call_next: Any) -> Any:
        call = functools.partial(call_next, context)
        client, calling = self._entered(context)
        counted = self._counter.prompt_call(context.message.name, client, call)
        return await _within(calling, counted)

    def _entered(self, context: Any) -> tuple[str | None, _Calling]:
        """Whom to count a call under, and the call running from here on.

        A call with the session of the call it is made within is either that same call on
        its way into a mounted server, counted under its client, or, where it passes a
        counting middleware again (or within one that found it so), the server's own code
        calling (``await server.call_tool(...)``), counted with no client. Any other call is
        a client's: even one made from within a call (a client a tool opens) has a session
        of its own.
        """
        session = _session(context)
        within = _calling.get()
        if within is None or session is None or within.session is not session:
            return _client(session), _Calling(session, (self,), own=False)
        own = within.own or self in within.counted_by
        client = None if own else _client(session)
        return client, _Calling(session, (*within.counted_by, self), own)


async def _within(calling: _Calling, counted: Awaitable[_R]) -> _R:
    """Await ``counted`` as the call running, for the calls it makes."""
    token = _calling.set(calling)
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
    """The name of the client with ``session``; None for no session (a call from code)."""
    if session is None:
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
