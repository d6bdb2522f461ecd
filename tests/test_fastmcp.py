"""FastMCP: the one-line lifespan counts every call with FastMCP's own client, over stdio and
over streamable HTTP, composes with FastMCP's ``|``, and a server's name chooses its file."""

# FastMCP needs Python 3.11: where it is missing, mypy cannot see it (nor its decorators).
# mypy: disable-error-code="import-not-found, untyped-decorator"
from __future__ import annotations

import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from aiosessionstore import AsyncSessionStore, session_lifespan, session_store

from .conftest import posix_only, read_json, read_on_disk
from .mcp_servers import (
    DEMO_SESSION,
    EXAMPLES,
    HANGING,
    SEVEN_STORED,
    check_acceptance,
    environment,
    http_server,
)
from .test_mcp import SERVERS, stdio

fastmcp = pytest.importorskip("fastmcp")

import mcp  # noqa: E402
from fastmcp import Client, Context, FastMCP  # noqa: E402
from fastmcp.server.lifespan import ContextManagerLifespan, Lifespan, lifespan  # noqa: E402
from fastmcp.tools import ToolResult  # noqa: E402
from fastmcp_server import build_server  # noqa: E402
from mcp.types import Implementation  # noqa: E402
from mcp_client import drive  # noqa: E402

FASTMCP_SERVER = EXAMPLES / "fastmcp_server.py"
TESTER = Implementation(name="fastmcp-tester", version="1")

pytestmark = pytest.mark.anyio


class FastMCPPeer:
    """FastMCP's Client as examples/mcp_client.py's ``drive`` calls a client: an error result
    is returned, not raised, as the SDK's client does."""

    def __init__(self, client: Client[Any]) -> None:
        self._client = client

    async def call_tool(self, name: str, arguments: dict[str, Any], /) -> Any:
        return await self._client.call_tool(name, arguments, raise_on_error=False)

    async def get_prompt(self, name: str, arguments: dict[str, str], /) -> Any:
        return await self._client.get_prompt(name, arguments)


class TestCountingInMemory:
    async def test_the_acceptance_case(self, session_path: Path) -> None:
        """FastMCP's in-memory Client: 13, 4, 6 errors, 1 rate limit, per tool, prompt and
        client; the client closes cleanly and the server has its middleware back."""
        server = build_server(str(session_path))
        middleware = list(server.middleware)
        async with Client(server, client_info=TESTER) as client:
            await drive(FastMCPPeer(client))
        assert server.middleware == middleware
        check_acceptance(await read_on_disk(session_path), "fastmcp-tester")
        async with AsyncSessionStore(session_path) as store:
            assert store.session.tools["fetch_quote"].p95 is not None

    async def test_each_connection_counts_once(self, session_path: Path) -> None:
        """FastMCP enters the lifespan per in-memory client: two in turn count once each."""
        server = build_server(str(session_path))
        for _ in range(2):
            async with Client(server, client_info=TESTER) as client:
                await drive(FastMCPPeer(client))
        check_acceptance(await read_on_disk(session_path), "fastmcp-tester", "fastmcp-tester")

    async def test_a_tool_added_later_is_counted_by_its_name(self, session_path: Path) -> None:
        """Tools added while the server runs are known as soon as they are called."""
        server = FastMCP("late", lifespan=session_lifespan(str(session_path)))
        async with Client(server) as client:
            await client.call_tool("late", {}, raise_on_error=False)
            server.tool(lambda: "here", name="late")
            await client.call_tool("late", {})
        tools = read_json(session_path)["tools"]
        assert {name: entry["calls"] for name, entry in tools.items()} == {
            "(unknown)": 1,
            "late": 1,
        }

    async def test_a_call_a_tool_makes_counts_without_a_client(self, session_path: Path) -> None:
        """A tool that calls another with server.call_tool() makes a call of the server's own,
        counted with no client, though it runs inside the client's call."""
        server = FastMCP("nested", lifespan=session_lifespan(str(session_path)))
        server.tool(lambda: "inner", name="inner")

        @server.tool
        async def outer() -> str:
            await server.call_tool("inner", {})
            return "outer"

        async with Client(server, client_info=TESTER) as client:
            await client.call_tool("outer", {})
        document = read_json(session_path)
        assert {name: entry["calls"] for name, entry in document["tools"].items()} == {
            "outer": 1,
            "inner": 1,
        }
        assert document["clients"] == {"fastmcp-tester": {"toolCalls": 1, "promptCalls": 0}}

    async def test_a_client_opened_in_a_tool_is_counted_as_a_client(self, tmp_path: Path) -> None:
        """A tool of one server that calls another through a client of its own: that
        client's calls count under its name, though they run within the first call."""
        inner = FastMCP("inner", lifespan=session_lifespan(str(tmp_path / "inner.json")))
        inner.tool(lambda: "pong", name="ping")
        outer = FastMCP("outer", lifespan=session_lifespan(str(tmp_path / "outer.json")))

        @outer.tool
        async def relay() -> str:
            async with Client(inner, client_info=TESTER) as client:
                await client.call_tool("ping", {})
            return "relayed"

        async with Client(outer) as client:
            await client.call_tool("relay", {})
        clients = read_json(tmp_path / "inner.json")["clients"]
        assert clients == {"fastmcp-tester": {"toolCalls": 1, "promptCalls": 0}}

    async def test_a_mounted_server_counts_the_client_and_the_servers_own_calls(
        self, tmp_path: Path
    ) -> None:
        """A server mounted on another, each with its own store: a client's call through the
        parent counts under the client in both; the parent's own call of the child's tool,
        made in a tool, counts with no client in both."""
        child = FastMCP("child", lifespan=session_lifespan(str(tmp_path / "child.json")))
        child.tool(lambda: "pong", name="ping")
        parent = FastMCP("parent", lifespan=session_lifespan(str(tmp_path / "parent.json")))
        parent.mount(child, namespace="child")

        @parent.tool
        async def relay() -> str:
            await parent.call_tool("child_ping", {})
            return "relayed"

        async with Client(parent, client_info=TESTER) as client:
            await client.call_tool("child_ping", {})
            await client.call_tool("relay", {})
        tester = {"fastmcp-tester": {"toolCalls": 1, "promptCalls": 0}}
        assert read_json(tmp_path / "child.json")["clients"] == tester
        assert read_json(tmp_path / "child.json")["stats"]["toolCalls"] == 2
        parent_document = read_json(tmp_path / "parent.json")
        assert parent_document["clients"] == {"fastmcp-tester": {"toolCalls": 2, "promptCalls": 0}}
        assert parent_document["stats"]["toolCalls"] == 3

    async def test_a_call_from_code_counts_without_a_client(self, session_path: Path) -> None:
        """server.call_tool() from the app's own code is counted, with no client named."""
        server = FastMCP("direct", lifespan=session_lifespan(str(session_path)))
        server.tool(lambda: "pong", name="ping")
        async with Client(server, client_info=TESTER) as client:
            await client.call_tool("ping", {})
            await server.call_tool("ping", {})
        document = read_json(session_path)
        assert document["tools"]["ping"]["calls"] == 2
        assert document["clients"] == {"fastmcp-tester": {"toolCalls": 1, "promptCalls": 0}}

    async def test_an_is_error_result_is_an_error(self, session_path: Path) -> None:
        """A tool that returns an error result rather than raising counts an error."""
        server = FastMCP("result", lifespan=session_lifespan(str(session_path)))

        @server.tool
        async def refuse() -> ToolResult:
            return ToolResult(content="no", is_error=True)

        async with Client(server) as client:
            assert (await client.call_tool("refuse", {}, raise_on_error=False)).is_error
        assert read_json(session_path)["tools"]["refuse"]["errors"] == 1

    async def test_a_cancelled_call_is_no_error(self, session_path: Path) -> None:
        """A call the client gives up on counts as a call, not as an error."""
        server = FastMCP("cancel", lifespan=session_lifespan(str(session_path)))
        started, ended = anyio.Event(), anyio.Event()

        @server.tool
        async def wait() -> None:
            started.set()
            try:
                await anyio.sleep_forever()
            finally:
                ended.set()

        async with Client(server) as client, anyio.create_task_group() as tasks:
            tasks.start_soon(client.call_tool, "wait", {})
            await started.wait()
            tasks.cancel_scope.cancel()
        await ended.wait()
        document = read_json(session_path)
        assert document["stats"]["toolCalls"] == 1
        assert document["stats"]["errors"] == 0

    async def test_a_refusing_middleware_still_counts(self, session_path: Path) -> None:
        """The counting is the outermost middleware: a call another one refuses is counted,
        and its exception, a rate limit here, is seen."""
        from fastmcp.server.middleware import Middleware

        class Throttled(Exception):
            pass

        class Refuse(Middleware):  # type: ignore[misc, unused-ignore]
            async def on_call_tool(self, context: Any, call_next: Any) -> Any:
                raise Throttled("slow down")

        lifespan_ = session_lifespan(str(session_path), rate_limit_errors=(Throttled,))
        server = FastMCP("refusing", lifespan=lifespan_, middleware=[Refuse()])
        server.tool(lambda: "ok", name="ping")
        async with Client(server) as client:
            with pytest.raises(mcp.MCPError):  # not a ToolError: an error response
                await client.call_tool("ping", {})
        assert read_json(session_path)["stats"]["rateLimits"] == 1


@lifespan
async def app_lifespan(server: FastMCP[Any]) -> AsyncIterator[dict[str, Any]]:
    yield {"answer": 42}


@asynccontextmanager
async def plain_app_lifespan(server: Any) -> AsyncIterator[dict[str, Any]]:
    yield {"answer": 42}


COMPOSITIONS: dict[str, Callable[[str], Any]] = {
    "session | app": lambda path: session_lifespan(path) | app_lifespan,
    "app | session": lambda path: app_lifespan | session_lifespan(path),
    "wrapped | app": lambda path: ContextManagerLifespan(session_lifespan(path)) | app_lifespan,
    "app_lifespan=": lambda path: session_lifespan(path, app_lifespan=plain_app_lifespan),
}


class TestComposition:
    @pytest.mark.parametrize("compose", COMPOSITIONS.values(), ids=list(COMPOSITIONS))
    async def test_the_store_and_the_apps_state_merge(
        self, session_path: Path, compose: Callable[[str], Any]
    ) -> None:
        """However composed, the lifespan context is one dict with the app's keys and the
        store, which session_store(ctx) finds; the calls are counted."""
        server = FastMCP("composed", lifespan=compose(str(session_path)))

        @server.tool
        async def answer(ctx: Context) -> int:
            state = ctx.lifespan_context
            assert state["session_store"] is session_store(ctx)
            return int(state["answer"])

        async with Client(server) as client:
            assert (await client.call_tool("answer", {})).data == 42
        assert read_json(session_path)["tools"]["answer"]["calls"] == 1

    async def test_alone_the_state_is_a_dict_with_the_store(self, session_path: Path) -> None:
        """FastMCP keeps its lifespan context a dict: ours is {"session_store": store}."""
        server = FastMCP("alone", lifespan=session_lifespan(str(session_path)))

        @server.tool
        async def keys(ctx: Context) -> list[str]:
            assert isinstance(session_store(ctx), AsyncSessionStore)
            return sorted(ctx.lifespan_context)

        async with Client(server) as client:
            assert (await client.call_tool("keys", {})).data == ["session_store"]

    async def test_an_app_state_that_is_no_dict_is_refused(self, session_path: Path) -> None:
        """FastMCP merges lifespan contexts as dicts: app_lifespan must yield one."""

        @asynccontextmanager
        async def listing(server: Any) -> AsyncIterator[list[int]]:
            yield [42]

        server = FastMCP("list", lifespan=session_lifespan(str(session_path), app_lifespan=listing))
        with pytest.raises(RuntimeError, match="must yield a dict, not a list") as caught:
            async with Client(server):
                pass
        assert isinstance(caught.value.__cause__, TypeError)

    def test_it_is_a_fastmcp_lifespan(self) -> None:
        """With fastmcp imported, session_lifespan() is a FastMCP Lifespan, so that the
        Lifespan on the left of | accepts it."""
        assert isinstance(session_lifespan(), Lifespan)


class TestIdentity:
    async def test_a_server_named_weather_writes_to_dot_weather(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """FastMCP("weather") keeps its session in ~/.weather/session.json."""
        monkeypatch.setenv("HOME", str(tmp_path))
        monkeypatch.delenv("WEATHER_HOME", raising=False)
        server = FastMCP("weather", lifespan=session_lifespan())
        server.tool(lambda: "sunny", name="forecast")
        async with Client(server) as client:
            await client.call_tool("forecast", {})
        assert read_json(tmp_path / ".weather" / "session.json")["stats"]["toolCalls"] == 1


@pytest.mark.slow
@posix_only
class TestOverStdio:
    async def test_the_acceptance_case(self, tmp_path: Path) -> None:
        """The example FastMCP server over stdio counts the case, exits 0, no traceback."""
        tester = Implementation(name="tester", version="1")
        async with mcp.Client(stdio(FASTMCP_SERVER, home=tmp_path), client_info=tester) as client:
            await drive(client)
        check_acceptance(read_json(tmp_path / DEMO_SESSION), "tester")
        assert (tmp_path / "status").read_text() == "0\n"
        assert "Traceback" not in (tmp_path / "stderr").read_text()


@pytest.mark.slow
class TestOverHttp:
    async def test_the_acceptance_case(self, tmp_path: Path) -> None:
        """Streamable HTTP, with the SDK's client and then FastMCP's: both counted on disk
        once SIGTERM stopped the server."""
        command = [sys.executable, str(FASTMCP_SERVER)]
        async with http_server(command, environment(tmp_path)) as (url, process, lines):
            async with mcp.Client(url, client_info=Implementation(name="sdk", version="1")) as sdk:
                await drive(sdk)
            async with Client(url, client_info=TESTER) as client:
                await drive(FastMCPPeer(client))
            process.terminate()
            status = await process.wait()
        assert status in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it caught
        check_acceptance(read_json(tmp_path / DEMO_SESSION), "sdk", "fastmcp-tester")
        assert not any("Traceback" in line for line in lines)

    @posix_only
    async def test_sigterm_while_uvicorn_waits_for_a_call(self, tmp_path: Path) -> None:
        """SIGTERM while a call hangs: uvicorn's handler, set after the store opened, takes
        the signal and waits for the call to end; the counts are on disk before a SIGKILL."""
        session = tmp_path / "session.json"
        command = [sys.executable, str(SERVERS), "hang", str(session)]
        hanging, stored = anyio.Event(), anyio.Event()
        watch = {HANGING: hanging, SEVEN_STORED: stored}
        async with (
            http_server(command, environment(tmp_path), watch) as (url, process, _),
            Client(url) as client,
            anyio.create_task_group() as tasks,
        ):
            for _ in range(6):
                await client.call_tool("ping", {})
            tasks.start_soon(client.call_tool, "hang", {})
            with anyio.fail_after(60):  # a safety net: the line is the event
                await hanging.wait()
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(20):  # the store's flush, not the server's end in 30 s
                await stored.wait()
            assert process.returncode is None  # uvicorn still waits for the call
            tasks.cancel_scope.cancel()
        assert read_json(session)["stats"]["toolCalls"] == 7
