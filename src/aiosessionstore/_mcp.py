"""For MCP servers: one lifespan opens the store with the server, counts every call, and
closes the store after.

Nothing here imports the ``mcp`` SDK or ``fastmcp`` (they cost 0.3 to 0.6 s of imports): a
lifespan is an async context manager factory that the framework calls with its server.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from ._mcp_count import counting, is_fastmcp
from ._store import AsyncSessionStore

__all__ = ("SessionLifespan", "SessionState", "session_lifespan", "session_store")

_AppState = TypeVar("_AppState")
#: A server of either framework, untyped here so that the core imports neither.
_Server = Any
AppLifespan = Callable[[_Server], AbstractAsyncContextManager[Any]]

#: The key of the store in a FastMCP server's lifespan context, which FastMCP keeps a dict.
STORE_KEY = "session_store"
#: For a server whose name leaves no usable directory name: the SDK's own default name.
FALLBACK_APP_NAME = "mcp-server"
_NOT_IN_APP_NAME = re.compile(r"[^a-z0-9._-]")
_MAX_APP_NAME = 64


@dataclass(frozen=True)
class SessionState(Generic[_AppState]):
    """What an MCPServer's lifespan context is, given ``app_lifespan``: the store, and the
    app's own lifespan state."""

    store: AsyncSessionStore
    app: _AppState


class SessionLifespan:
    """A lifespan for ``MCPServer`` and ``FastMCP`` alike; ``session_lifespan()`` makes one.

    With FastMCP it composes with ``|`` on either side, as FastMCP's own lifespans do.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        app_lifespan: AppLifespan | None,
        count_calls: bool,
        options: dict[str, Any],
    ) -> None:
        self._path = path
        self._app_lifespan = app_lifespan
        self._count_calls = count_calls
        self._options = options

    def __call__(self, server: _Server) -> AbstractAsyncContextManager[Any]:
        return self._run(server)

    @asynccontextmanager
    async def _run(self, server: _Server) -> AsyncIterator[Any]:
        async with AsyncSessionStore(self._path, **self._store_options(server)) as store:
            with counting(server, store) if self._count_calls else nullcontext():
                if self._app_lifespan is None:
                    yield _state(server, store, None)
                else:
                    async with self._app_lifespan(server) as app_state:
                        yield _state(server, store, (app_state,))

    def _store_options(self, server: _Server) -> dict[str, Any]:
        """The store's options; a server's name is the app name, unless one was given."""
        name = getattr(server, "name", None)
        if self._path is not None or "app_name" in self._options or not isinstance(name, str):
            return self._options
        return {**self._options, "app_name": app_name_for(name)}

    def __or__(self, other: Any) -> Any:
        """``session_lifespan() | app_lifespan``, for FastMCP."""
        lifespans = sys.modules.get("fastmcp.server.lifespan")
        if lifespans is None:
            return NotImplemented
        return lifespans.ContextManagerLifespan(self) | other

    def __ror__(self, other: Any) -> Any:
        """``app_lifespan | session_lifespan()``, for FastMCP."""
        lifespans = sys.modules.get("fastmcp.server.lifespan")
        if lifespans is None or not isinstance(other, lifespans.Lifespan):
            return NotImplemented
        return lifespans.ComposedLifespan(other, lifespans.ContextManagerLifespan(self))


def _state(server: _Server, store: AsyncSessionStore, app: tuple[Any] | None) -> Any:
    """The lifespan context: FastMCP's is a dict, which its ``|`` merges with others."""
    if is_fastmcp(server):
        app_state = {} if app is None or app[0] is None else app[0]
        if not isinstance(app_state, Mapping):
            raise TypeError(
                f"a FastMCP lifespan must yield a dict, not a {type(app_state).__name__}"
            )
        return {STORE_KEY: store, **app_state}
    return store if app is None else SessionState(store, app[0])


def app_name_for(server_name: str) -> str:
    """A server's name as a directory name: ``Weather API`` is ``weather-api``."""
    name = _NOT_IN_APP_NAME.sub("-", server_name.lower())[:_MAX_APP_NAME]
    return name if name.strip(".") else FALLBACK_APP_NAME


@functools.cache
def _fastmcp_lifespan_class(base: type) -> type[SessionLifespan]:
    """SessionLifespan that is also a FastMCP ``Lifespan``, whose ``|`` accepts no other."""
    return cast(type[SessionLifespan], type("SessionLifespan", (SessionLifespan, base), {}))


def session_lifespan(
    path: str | os.PathLike[str] | None = None,
    *,
    app_lifespan: AppLifespan | None = None,
    count_calls: bool = True,
    **options: Any,
) -> SessionLifespan:
    """The lifespan for ``MCPServer("demo", lifespan=session_lifespan())`` or FastMCP's.

    It opens the store with the server, counts every ``tools/call`` and ``prompts/get`` (not
    with ``count_calls=False``), and closes the store when the server stops. Without ``path``
    or ``app_name``, the server's name is the app name: ``~/.<name>/session.json``.
    ``options`` go to ``AsyncSessionStore``. ``app_lifespan``, the app's own, runs inside
    (the store outlives it). In a tool, ``session_store(ctx)`` is the store.
    """
    lifespans = sys.modules.get("fastmcp.server.lifespan")  # never imported from here
    kind = SessionLifespan if lifespans is None else _fastmcp_lifespan_class(lifespans.Lifespan)
    return kind(path, app_lifespan, count_calls, options)


def session_store(ctx: Any) -> AsyncSessionStore:
    """The store behind a tool's or prompt's ``ctx``, of MCPServer or FastMCP, as
    ``session_lifespan`` set it up; or behind a lifespan context itself."""
    store = _find_store(_lifespan_state(ctx))
    if store is None:
        raise TypeError(
            f"the server's lifespan context is a {type(_lifespan_state(ctx)).__name__}, with "
            "no session store: pass lifespan=aiosessionstore.session_lifespan(...) to the server"
        )
    return store


def _lifespan_state(ctx: Any) -> Any:
    """FastMCP's ``ctx.lifespan_context`` (a mounted server's own), the SDK's
    ``ctx.request_context.lifespan_context``, or a lifespan context itself.

    FastMCP's is recognised by its class: asking the SDK's pydantic Context, or its class,
    for an attribute it lacks costs microseconds, as much as the rest of the counting.
    """
    fastmcp = sys.modules.get("fastmcp.server.context")
    if fastmcp is not None and isinstance(ctx, fastmcp.Context):
        return ctx.lifespan_context
    for get in (_request_lifespan_context, _own_lifespan_context):
        try:
            return get(ctx)
        except (AttributeError, ValueError):  # ValueError: the SDK's, outside a request
            continue
    return ctx


def _request_lifespan_context(ctx: Any) -> Any:
    return ctx.request_context.lifespan_context


def _own_lifespan_context(ctx: Any) -> Any:
    return ctx.lifespan_context


def _find_store(state: Any) -> AsyncSessionStore | None:
    if isinstance(state, AsyncSessionStore):
        return state
    if isinstance(state, SessionState):
        return state.store
    if isinstance(state, Mapping):
        store = state.get(STORE_KEY)
        return store if isinstance(store, AsyncSessionStore) else None
    return None
