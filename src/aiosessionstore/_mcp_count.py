"""Counting every ``tools/call`` and ``prompts/get`` of a server, installed by its lifespan.

The lifespan installs the counting on the server it is given and removes it when it ends:
both MCP clients for tests (``mcp.Client(server)``, FastMCP's in-memory ``Client``) enter the
lifespan again for each connection, and counting left in place would count every call twice.
Nothing here imports ``mcp`` or ``fastmcp``: a server of either is recognised by its class in
``sys.modules``, which holds the framework whenever such a server exists.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from ._names import UNKNOWN, check_name
from ._store import AsyncSessionStore
from ._tools import ToolCall

__all__ = ("CallCounter", "counting", "is_fastmcp")

logger = logging.getLogger("aiosessionstore")

_R = TypeVar("_R")
#: Given a name a client asked for, the names of those it found: all of them, or just that one.
Lookup = Callable[[str], Awaitable[Iterable[str]]]


class KnownNames:
    """Which names are the server's own tools (or prompts): only those are counted by name.

    A client chooses the name it calls, so counting by any name it sends would let it grow
    the file; unknown names and names the file cannot keep are counted as UNKNOWN. Names
    found are remembered, and a miss asks the server again, since tools may be added later.
    """

    def __init__(self, lookup: Lookup, what: str) -> None:
        self._lookup = lookup
        self._what = what
        self._known: set[str] = set()

    async def recorded(self, name: object) -> str:
        """The name to count a call of ``name`` under."""
        if not isinstance(name, str):
            return UNKNOWN
        if name in self._known:
            return name
        if not _acceptable(name, self._what):
            return UNKNOWN
        try:
            found = await self._lookup(name)
        except Exception as exc:  # counting must never fail a call
            logger.debug("could not look up %s %r: %r", self._what, name, exc)
            return UNKNOWN
        self._known.update(other for other in found if _acceptable(other, self._what))
        return name if name in self._known else UNKNOWN


def _acceptable(name: str, what: str) -> bool:
    try:
        check_name(name, what)
    except (TypeError, ValueError):
        return False
    return True


class CallCounter:
    """Counts calls into the store of the innermost lifespan of the server still running."""

    def __init__(self, tools: Lookup, prompts: Lookup) -> None:
        self.stores: list[AsyncSessionStore] = []
        self._tools = KnownNames(tools, "tool")
        self._prompts = KnownNames(prompts, "prompt")
        #: Takes the counting off the server again.
        self.remove: Callable[[], None] = lambda: None

    async def tool_call(
        self,
        name: object,
        client: str | None,
        call: Callable[[], Awaitable[_R]],
        state: object = None,
    ) -> _R:
        """Run ``call``, a call of tool ``name`` from ``client``, and count it (``state``:
        see ``_store_for``)."""
        if not self.stores:
            return await call()
        store = self._store_for(state)
        recorded = await self._tools.recorded(name)
        return await _counted(store.tool_call(recorded, client=client), call)

    async def prompt_call(
        self,
        name: object,
        client: str | None,
        call: Callable[[], Awaitable[_R]],
        state: object = None,
    ) -> _R:
        """Run ``call``, a get of prompt ``name`` from ``client``, and count it."""
        if not self.stores:
            return await call()
        store = self._store_for(state)
        recorded = await self._prompts.recorded(name)
        return await _counted(store.prompt_call(recorded, client=client), call)

    def _store_for(self, state: object) -> AsyncSessionStore:
        """The store of the connection that made the call, known by ``state``, its lifespan
        context (the store, or a SessionState): it outlives the call, where the newest
        store may close first (two in-memory clients). The newest for a call from code."""
        for store in self.stores:
            if state is store or getattr(state, "store", None) is store:
                return store
        return self.stores[-1]


async def _counted(counter: ToolCall, call: Callable[[], Awaitable[_R]]) -> _R:
    """An exception counts itself (see ToolCall); a result that reports an error is one too."""
    async with counter:
        result = await call()
        if getattr(result, "is_error", False) is True:
            counter.mark_error()
    return result


#: The counters installed, by ``id(server)``; each holds its server while installed.
_installed: dict[int, tuple[Any, CallCounter]] = {}


@contextmanager
def counting(server: Any, store: AsyncSessionStore) -> Iterator[None]:
    """Count the server's calls into ``store`` while the block runs.

    Lifespans of one server may overlap (two in-memory clients at once): the counting is
    installed once, by the first, and removed by the last; calls go to the newest store.
    """
    entry = _installed.get(id(server))
    if entry is None:
        counter = _install(server)
        if counter is None:
            yield
            return
        entry = _installed[id(server)] = (server, counter)
    counter = entry[1]
    counter.stores.append(store)
    try:
        yield
    finally:
        counter.stores.remove(store)
        if not counter.stores:
            del _installed[id(server)]
            counter.remove()


def _install(server: Any) -> CallCounter | None:
    if is_fastmcp(server):
        from ._mcp_fastmcp import install_middleware

        return install_middleware(server)
    sdk = sys.modules.get("mcp.server.mcpserver.server")
    if sdk is not None and isinstance(server, sdk.MCPServer):
        return install_sdk_hooks(server)
    if server is not None:
        logger.warning(
            "cannot count the calls of a %s: count them with store.tool_call(), or pass "
            "count_calls=False",
            type(server).__name__,
        )
    return None


def is_fastmcp(server: Any) -> bool:
    """Whether ``server`` is a FastMCP server; never imports fastmcp."""
    fastmcp = sys.modules.get("fastmcp.server.server")
    return fastmcp is not None and isinstance(server, fastmcp.FastMCP)


# -- the MCP SDK's MCPServer -------------------------------------------------------------


def install_sdk_hooks(server: Any) -> CallCounter:
    """Count an MCPServer's calls by shadowing its public ``call_tool`` and ``get_prompt``.

    The SDK's request handlers call ``self.call_tool(...)``, and that raises the tool's own
    exception as the ``__cause__`` of its ToolError before the handler turns it into an
    ``is_error`` result: a hook there sees the rate limits that the SDK's middleware, seeing
    only the result, would not.
    """

    async def tool_names(name: str) -> list[str]:
        return [tool.name for tool in await server.list_tools()]

    async def prompt_names(name: str) -> list[str]:
        return [prompt.name for prompt in await server.list_prompts()]

    counter = CallCounter(tool_names, prompt_names)
    call_tool, get_prompt = server.call_tool, server.get_prompt

    async def counted_call_tool(name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        call = functools.partial(call_tool, name, arguments, context)
        client, state = _sdk_caller(context)
        return await counter.tool_call(name, client, call, state)

    async def counted_get_prompt(
        name: str, arguments: dict[str, Any] | None = None, context: Any = None
    ) -> Any:
        call = functools.partial(get_prompt, name, arguments, context)
        client, state = _sdk_caller(context)
        return await counter.prompt_call(name, client, call, state)

    counter.remove = _shadow(server, call_tool=counted_call_tool, get_prompt=counted_get_prompt)
    return counter


def _sdk_caller(context: Any) -> tuple[str | None, object]:
    """The calling client's name and its connection's lifespan context; None and None for a
    call made from code, with no request."""
    try:
        request = context.request_context
        params, state = request.session.client_params, request.lifespan_context
    except (AttributeError, ValueError):  # ValueError: "Context is not available outside..."
        return None, None
    return client_info_name(params), state


def client_info_name(params: Any) -> str:
    """The name in the client's ``initialize`` params; UNKNOWN if it gave none."""
    name = getattr(getattr(params, "client_info", None), "name", None)
    return name if isinstance(name, str) else UNKNOWN


_MISSING = object()


def _shadow(target: Any, **methods: Callable[..., Any]) -> Callable[[], None]:
    """Set ``methods`` as attributes of ``target``; the function returned puts back what was
    there, unless someone has replaced ours since."""
    saved = {name: vars(target).get(name, _MISSING) for name in methods}
    for name, method in methods.items():
        setattr(target, name, method)

    def restore() -> None:
        for name, method in methods.items():
            if vars(target).get(name) is not method:
                continue
            if saved[name] is _MISSING:
                delattr(target, name)
            else:
                setattr(target, name, saved[name])

    return restore
