"""For MCP servers: a ready lifespan that opens the store with the server and closes it after.

Nothing here imports the ``mcp`` SDK (it costs ~0.4 s of import time): a lifespan is just an
async context manager factory that the SDK calls with the server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

from ._store import AsyncSessionStore

__all__ = ("SessionState", "session_lifespan", "session_store")

_AppState = TypeVar("_AppState")
_Server = Any  # mcp.server.mcpserver.MCPServer, untyped here so the core never imports mcp


@dataclass(frozen=True)
class SessionState(Generic[_AppState]):
    """What a composed lifespan yields: the session store and the app's own lifespan state."""

    store: AsyncSessionStore
    app: _AppState


@overload
def session_lifespan(
    path: str | None = None, *, app_lifespan: None = None, **options: Any
) -> Callable[[_Server], AbstractAsyncContextManager[AsyncSessionStore]]: ...


@overload
def session_lifespan(
    path: str | None = None,
    *,
    app_lifespan: Callable[[_Server], AbstractAsyncContextManager[_AppState]],
    **options: Any,
) -> Callable[[_Server], AbstractAsyncContextManager[SessionState[_AppState]]]: ...


def session_lifespan(
    path: str | None = None,
    *,
    app_lifespan: Callable[[_Server], AbstractAsyncContextManager[Any]] | None = None,
    **options: Any,
) -> Callable[[_Server], AbstractAsyncContextManager[Any]]:
    """A lifespan for ``MCPServer(..., lifespan=session_lifespan())``.

    The server's lifespan context is the store, or, given the app's own ``app_lifespan``, a
    ``SessionState(store, app_state)``; the app's lifespan runs inside the store's, so the
    store outlives it. ``options`` go to ``AsyncSessionStore``. In a tool, reach the store
    with ``session_store(ctx)``.
    """

    @asynccontextmanager
    async def lifespan(server: _Server) -> AsyncIterator[Any]:
        async with AsyncSessionStore(path, **options) as store:
            if app_lifespan is None:
                yield store
            else:
                async with app_lifespan(server) as app_state:
                    yield SessionState(store, app_state)

    return lifespan


def session_store(ctx: Any) -> AsyncSessionStore:
    """The store behind a tool's or prompt's ``ctx``, as ``session_lifespan`` set it up."""
    state = ctx.request_context.lifespan_context
    if isinstance(state, AsyncSessionStore):
        return state
    if isinstance(state, SessionState):
        return state.store
    raise TypeError(
        f"the server's lifespan context is a {type(state).__name__}, not a session store: "
        "pass lifespan=aiosessionstore.session_lifespan(...) to the server"
    )
