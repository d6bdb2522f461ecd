"""The SDK's MCPServer: the one-line lifespan counts every call, in memory, over stdio and
over streamable HTTP, and a server's name chooses its session file."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest

from aiosessionstore import (
    AsyncSessionStore,
    SessionState,
    session_lifespan,
    session_store,
)
from aiosessionstore._mcp import FALLBACK_APP_NAME, app_name_for
from aiosessionstore._mcp_count import KnownNames

from .conftest import posix_only, read_json, read_on_disk
from .mcp_servers import (
    DEMO_SESSION,
    EXAMPLES,
    STALLED,
    StderrLines,
    check_acceptance,
    environment,
    http_server,
)

mcp = pytest.importorskip("mcp")

from mcp import Client, StdioServerParameters  # noqa: E402
from mcp.client import stdio as mcp_stdio  # noqa: E402
from mcp.client.stdio import stdio_client  # noqa: E402
from mcp.server.mcpserver import Context, MCPServer  # noqa: E402
from mcp.types import CallToolResult, Implementation, TextContent  # noqa: E402
from mcp_client import drive  # noqa: E402
from mcp_server import build_server  # noqa: E402

SERVERS = Path(__file__).with_name("mcp_servers.py")
SDK_SERVER = EXAMPLES / "mcp_server.py"
TESTER = Implementation(name="tester", version="1")

pytestmark = pytest.mark.anyio


class TestCountingInMemory:
    async def test_the_acceptance_case(self, session_path: Path) -> None:
        """13 tool calls and 4 prompt gets end as 13, 4, 6 errors and 1 rate limit, with
        per-tool, per-prompt and per-client stats and percentiles."""
        async with Client(build_server(str(session_path)), client_info=TESTER) as client:
            await drive(client)
        check_acceptance(await read_on_disk(session_path), "tester")
        async with AsyncSessionStore(session_path) as store:
            session = store.session
        assert session.tools["divide"].p50 is not None
        assert session.prompts["summarize"].p99 is not None
        assert session.clients["tester"].tool_calls == 13

    async def test_each_connection_counts_once(self, session_path: Path) -> None:
        """The lifespan runs per in-memory connection: two in turn count once each, and
        the server has its own methods back after each."""
        server = build_server(str(session_path))
        for _ in range(2):
            async with Client(server, client_info=TESTER) as client:
                await drive(client)
            assert "call_tool" not in vars(server)
            assert "get_prompt" not in vars(server)
        check_acceptance(await read_on_disk(session_path), "tester", "tester")

    async def test_overlapping_connections_count_once(self, session_path: Path) -> None:
        """Two connections open at once: the counting is installed once, removed by the last."""
        server = build_server(str(session_path))
        async with Client(server, client_info=TESTER) as first:
            async with Client(server, client_info=TESTER) as second:
                await drive(second)
            await drive(first)
        assert "call_tool" not in vars(server)
        check_acceptance(await read_on_disk(session_path), "tester", "tester")

    async def test_a_call_outlives_a_newer_connection(self, session_path: Path) -> None:
        """A call of the first of two connections still running when the second closes
        counts its end (its error, its time) in its own connection's store."""
        server = MCPServer("overlap", lifespan=session_lifespan(str(session_path)))
        started, release = anyio.Event(), anyio.Event()

        @server.tool()
        async def fails_later() -> str:
            started.set()
            await release.wait()
            raise ValueError("after the second connection closed")

        async def call(client: Any) -> None:
            assert (await client.call_tool("fails_later", {})).is_error

        async with Client(server, client_info=TESTER) as first, anyio.create_task_group() as tasks:
            async with Client(server):  # the newer connection: closed first
                tasks.start_soon(call, first)
                await started.wait()
            release.set()
        stats = read_json(session_path)["stats"]
        assert (stats["toolCalls"], stats["errors"]) == (1, 1)

    async def test_a_tool_added_later_is_counted_by_its_name(self, session_path: Path) -> None:
        """Tools added while the server runs are known as soon as they are called."""
        server = MCPServer("late", lifespan=session_lifespan(str(session_path)))
        async with Client(server) as client:
            await client.call_tool("late", {})
            server.add_tool(lambda: "here", name="late")
            await client.call_tool("late", {})
        tools = read_json(session_path)["tools"]
        assert {name: entry["calls"] for name, entry in tools.items()} == {
            "(unknown)": 1,
            "late": 1,
        }

    async def test_names_the_file_cannot_keep_are_unknown(self, session_path: Path) -> None:
        """A tool or client name that check_name refuses is counted as "(unknown)"."""
        server = MCPServer("names", lifespan=session_lifespan(str(session_path)))
        server.add_tool(lambda: "x", name="(reserved)")
        server.add_tool(lambda: "y", name="y" * 129)
        rogue = Implementation(name="rogue\x1b]0;pwned\x07", version="1")
        async with Client(server, client_info=rogue) as client:
            await client.call_tool("(reserved)", {})
            await client.call_tool("y" * 129, {})
        document = read_json(session_path)
        assert set(document["tools"]) == {"(unknown)"}
        assert document["clients"] == {"(unknown)": {"toolCalls": 2, "promptCalls": 0}}

    async def test_a_cancelled_call_is_no_error(self, session_path: Path) -> None:
        """A call the client gives up on counts as a call, not as an error."""
        server = MCPServer("cancel", lifespan=session_lifespan(str(session_path)))
        started, ended = anyio.Event(), anyio.Event()

        @server.tool()
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

    async def test_an_is_error_result_is_an_error(self, session_path: Path) -> None:
        """A tool that returns an error result rather than raising counts an error."""
        server = MCPServer("result", lifespan=session_lifespan(str(session_path)))

        @server.tool()
        async def refuse() -> CallToolResult:
            return CallToolResult(content=[TextContent(type="text", text="no")], is_error=True)

        async with Client(server) as client:
            assert (await client.call_tool("refuse", {})).is_error
        assert read_json(session_path)["tools"]["refuse"]["errors"] == 1

    async def test_a_call_a_tool_makes_counts_without_a_client(self, session_path: Path) -> None:
        """A tool that calls another with server.call_tool() makes a call of the server's own,
        counted with no client, though it runs inside the client's call."""
        server = MCPServer("nested", lifespan=session_lifespan(str(session_path)))
        server.add_tool(lambda: "inner", name="inner")

        @server.tool()
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
        assert document["clients"] == {"tester": {"toolCalls": 1, "promptCalls": 0}}

    async def test_a_call_from_code_counts_without_a_client(self, session_path: Path) -> None:
        """server.call_tool() from the app's own code is counted, with no client named."""
        server = MCPServer("direct", lifespan=session_lifespan(str(session_path)))
        server.add_tool(lambda: "pong", name="ping")
        async with Client(server, client_info=TESTER) as client:
            await client.call_tool("ping", {})
            await server.call_tool("ping", {})
        document = read_json(session_path)
        assert document["tools"]["ping"]["calls"] == 2
        assert document["clients"] == {"tester": {"toolCalls": 1, "promptCalls": 0}}

    async def test_the_apps_own_call_tool_is_put_back(self, session_path: Path) -> None:
        """A call_tool the app set on the instance is wrapped while counting, then restored."""
        server = MCPServer("wrapped", lifespan=session_lifespan(str(session_path)))
        server.add_tool(lambda: "pong", name="ping")
        seen: list[str] = []
        original = server.call_tool

        async def call_tool(name: str, arguments: dict[str, Any], context: Any = None) -> Any:
            seen.append(name)
            return await original(name, arguments, context)

        server.call_tool = call_tool  # type: ignore[method-assign]
        async with Client(server) as client:
            await client.call_tool("ping", {})
        assert server.call_tool is call_tool
        assert seen == ["ping"]
        assert read_json(session_path)["tools"]["ping"]["calls"] == 1

    async def test_count_calls_false_counts_nothing_by_itself(self, session_path: Path) -> None:
        """With count_calls=False only what the tools count by hand is counted."""
        server = MCPServer(
            "manual", lifespan=session_lifespan(str(session_path), count_calls=False)
        )

        @server.tool()
        async def search(ctx: Context) -> str:
            async with session_store(ctx).tool_call("search"):
                return "found"

        async with Client(server) as client:
            await client.call_tool("search", {})
            await client.call_tool("nothing", {})
        assert read_json(session_path)["stats"]["toolCalls"] == 1

    async def test_another_kind_of_server_is_logged_not_counted(
        self, session_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A server the lifespan cannot count for gets the store and a warning."""
        caplog.set_level(logging.WARNING, logger="aiosessionstore")
        async with session_lifespan(str(session_path))(object()) as store:
            assert isinstance(store, AsyncSessionStore)
        assert "cannot count the calls of a object" in caplog.text


class TestKnownNames:
    async def test_a_failing_lookup_is_unknown_and_raises_nothing(self) -> None:
        """A server that cannot say which tools it has gets its calls counted as "(unknown)"."""

        async def lookup(name: str) -> list[str]:
            raise RuntimeError("no listing today")

        assert await KnownNames(lookup, "tool").recorded("ping") == "(unknown)"

    async def test_names_found_are_remembered_and_misses_ask_again(self) -> None:
        """A known name is not looked up again; an unknown one is, as it may be added."""
        asked: list[str] = []
        tools = {"ping"}

        async def lookup(name: str) -> set[str]:
            asked.append(name)
            return set(tools)

        names = KnownNames(lookup, "tool")
        assert [await names.recorded(name) for name in ("ping", "ping", "pong")] == [
            "ping",
            "ping",
            "(unknown)",
        ]
        tools.add("pong")
        assert await names.recorded("pong") == "pong"
        assert asked == ["ping", "pong", "pong"]
        assert await names.recorded(42) == "(unknown)"


class TestLifespanState:
    async def test_composes_with_the_apps_own_lifespan(self, session_path: Path) -> None:
        """With app_lifespan, tools get SessionState(store, app) and session_store() finds it."""

        @asynccontextmanager
        async def app_lifespan(server: Any) -> AsyncIterator[dict[str, int]]:
            yield {"answer": 42}

        server = MCPServer(
            "composed", lifespan=session_lifespan(str(session_path), app_lifespan=app_lifespan)
        )

        @server.tool()
        async def answer(ctx: Context) -> int:
            state = ctx.request_context.lifespan_context
            assert isinstance(state, SessionState)
            assert session_store(ctx) is state.store
            return int(state.app["answer"])

        async with Client(server) as client:
            result = await client.call_tool("answer", {})
        assert result.structured_content == {"result": 42}
        assert read_json(session_path)["tools"]["answer"]["calls"] == 1

    async def test_session_store_names_a_wrong_lifespan(self) -> None:
        """A tool on a server without our lifespan gets a TypeError that says what to do."""
        request_context = SimpleNamespace(lifespan_context={"db": None})
        ctx = SimpleNamespace(request_context=request_context)
        with pytest.raises(TypeError, match=r"lifespan=aiosessionstore\.session_lifespan"):
            session_store(ctx)

    async def test_without_a_server_the_state_is_the_store(self, session_path: Path) -> None:
        """Without app_lifespan, an MCPServer's lifespan context is the store itself."""
        async with session_lifespan(str(session_path))(None) as store:
            assert isinstance(store, AsyncSessionStore)
            assert session_store(store) is store


class TestIdentity:
    @pytest.mark.parametrize(
        ("name", "app"),
        [
            ("weather", "weather"),
            ("octocode", "octocode"),
            ("Weather API", "weather-api"),
            ("my_tool.v2", "my_tool.v2"),
            ("Météo/../x", "m-t-o-..-x"),
            ("..", FALLBACK_APP_NAME),
            (".", FALLBACK_APP_NAME),
            ("", FALLBACK_APP_NAME),
            ("x" * 100, "x" * 64),
        ],
    )
    def test_a_server_name_becomes_a_directory_name(self, name: str, app: str) -> None:
        """Lower case, [a-z0-9._-] only, never . or .. or empty, at most 64 characters."""
        assert app_name_for(name) == app

    async def test_two_servers_keep_two_files(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """weather writes ~/.weather/session.json and octocode ~/.octocode/session.json."""
        monkeypatch.setenv("HOME", str(tmp_path))
        for variable in ("WEATHER_HOME", "OCTOCODE_HOME"):
            monkeypatch.delenv(variable, raising=False)
        for name, calls in (("weather", 2), ("octocode", 3)):
            server = MCPServer(name, lifespan=session_lifespan())
            server.add_tool(lambda: "ok", name="ping")
            async with Client(server) as client:
                for _ in range(calls):
                    await client.call_tool("ping", {})
        assert read_json(tmp_path / ".weather" / "session.json")["stats"]["toolCalls"] == 2
        assert read_json(tmp_path / ".octocode" / "session.json")["stats"]["toolCalls"] == 3

    async def test_an_app_home_variable_still_wins(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """$WEATHER_API_HOME moves the session of a server named "Weather API"."""
        monkeypatch.setenv("WEATHER_API_HOME", str(tmp_path / "elsewhere"))
        server = MCPServer("Weather API", lifespan=session_lifespan())
        async with Client(server) as client:
            await client.call_tool("missing", {})
        assert read_json(tmp_path / "elsewhere" / "session.json")["stats"]["toolCalls"] == 1

    async def test_an_explicit_app_name_or_path_wins(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """app_name= and path= are kept over the server's name; the store alone keeps
        octocode."""
        monkeypatch.setenv("HOME", str(tmp_path))
        for variable in ("OTHER_HOME", "OCTOCODE_HOME"):
            monkeypatch.delenv(variable, raising=False)
        given = tmp_path / "given.json"
        for lifespan in (session_lifespan(app_name="other"), session_lifespan(str(given))):
            async with Client(MCPServer("weather", lifespan=lifespan)) as client:
                await client.call_tool("missing", {})
        assert (tmp_path / ".other" / "session.json").is_file()
        assert given.is_file()
        assert not (tmp_path / ".weather").exists()
        assert AsyncSessionStore().path == tmp_path / ".octocode" / "session.json"


def stdio(script: Path, *arguments: str, home: Path) -> StdioServerParameters:
    """``script`` as the SDK's stdio client starts it, with HOME at ``home``, through a shell
    that writes its stderr to ``home/stderr`` and its exit status to ``home/status``."""
    shell = '"$@" 2>"$HOME/stderr"; echo $? >"$HOME/status"'
    home.mkdir(parents=True, exist_ok=True)
    return StdioServerParameters(
        command="sh",
        args=["-c", shell, "sh", sys.executable, str(script), *arguments],
        env=environment(home),
    )


@pytest.mark.slow
@posix_only
class TestOverStdio:
    async def test_the_acceptance_case(self, tmp_path: Path) -> None:
        """The example server counts the case in ~/.<its name>, exits 0, with no traceback."""
        async with Client(stdio(SDK_SERVER, home=tmp_path), client_info=TESTER) as client:
            await drive(client)
        check_acceptance(read_json(tmp_path / DEMO_SESSION), "tester")
        assert _read(tmp_path / "status") == "0\n"
        assert "Traceback" not in _read(tmp_path / "stderr")

    async def test_counts_after_the_clients_sigterm_escalation(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A server stuck in shutdown gets SIGTERM from the client: it flushes, then dies."""
        path = tmp_path / "session.json"
        parameters = StdioServerParameters(
            command=sys.executable,
            args=[str(SERVERS), "stall", str(path)],
            env=environment(tmp_path),
        )
        stderr = StderrLines(STALLED)
        escalate = mcp_stdio._terminate_process_tree

        async def once_stalled(process: Any) -> None:
            try:
                stalled = await anyio.to_thread.run_sync(stderr.seen.wait, 60)
            finally:
                await escalate(process)
            assert stalled, "".join(stderr.lines)

        # The client's grace period, 2 s, is over at once; its SIGTERM waits for the server
        # to say that it hangs in its shutdown.
        monkeypatch.setattr(mcp_stdio, "PROCESS_TERMINATION_TIMEOUT", 0)
        monkeypatch.setattr(mcp_stdio, "_terminate_process_tree", once_stalled)
        try:
            transport = stdio_client(parameters, errlog=stderr.errlog)
            async with Client(transport, client_info=TESTER) as client:
                await drive(client)
        finally:
            stderr.close()
        assert stderr.seen.is_set()
        check_acceptance(read_json(path), "tester")

    async def test_two_servers_with_two_names_keep_two_files(self, tmp_path: Path) -> None:
        """At once, servers "weather" and "Octo Code" write apart, each exactly."""

        async def use(name: str, calls: int) -> None:
            parameters = stdio(SERVERS, "named", name, home=tmp_path / name)
            async with Client(parameters) as client:
                for _ in range(calls):
                    await client.call_tool("ping", {})

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(use, "weather", 5)
            tasks.start_soon(use, "Octo Code", 7)
        weather = read_json(tmp_path / "weather" / ".weather" / "session.json")
        octo = read_json(tmp_path / "Octo Code" / ".octo-code" / "session.json")
        assert (weather["stats"]["toolCalls"], octo["stats"]["toolCalls"]) == (5, 7)
        assert weather["sessionId"] != octo["sessionId"]
        assert _read(tmp_path / "weather" / "status") == "0\n"

    async def test_two_servers_on_one_session_lose_nothing(self, tmp_path: Path) -> None:
        """Two clients, each with its own server process, at once on one session file."""

        async def one_client() -> None:
            async with Client(stdio(SERVERS, "named", "shared", home=tmp_path)) as client:
                for _ in range(20):
                    await client.call_tool("ping", {})

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(one_client)
            tasks.start_soon(one_client)
        document = read_json(tmp_path / ".shared" / "session.json")
        assert document["stats"]["toolCalls"] == 40
        assert document["tools"]["ping"]["calls"] == 40


@pytest.mark.slow
class TestOverHttp:
    async def test_the_acceptance_case(self, tmp_path: Path) -> None:
        """Streamable HTTP: the counts are on disk once SIGTERM stopped the server."""
        command = [sys.executable, str(SDK_SERVER), "--verbose"]
        async with http_server(command, environment(tmp_path)) as (url, process, lines):
            async with Client(url, client_info=TESTER) as client:
                await drive(client)
            process.terminate()
            status = await process.wait()
        assert status in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it caught
        check_acceptance(read_json(tmp_path / DEMO_SESSION), "tester")
        assert any("ZeroDivisionError" in line for line in lines)  # --verbose shows them


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


@pytest.mark.slow
def test_the_core_imports_neither_mcp_nor_fastmcp() -> None:
    """`import aiosessionstore` and making a lifespan leave the SDK and FastMCP unloaded."""
    code = (
        "import sys, aiosessionstore; aiosessionstore.session_lifespan(); "
        "loaded = sorted({'mcp', 'fastmcp'} & set(sys.modules)); "
        "sys.exit(str(loaded) if loaded else None)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
