"""MCP servers: the lifespan helper, per-tool stats, and real stdio servers end to end."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest

from aiosessionstore import AsyncSessionStore, SessionState, session_lifespan, session_store

from .conftest import read_json

mcp = pytest.importorskip("mcp")

from mcp import Client, StdioServerParameters  # noqa: E402
from mcp.server.mcpserver import Context, MCPServer  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))
from mcp_server import build_server  # noqa: E402

SERVERS = Path(__file__).with_name("mcp_servers.py")

pytestmark = pytest.mark.anyio


async def call_everything(client: Client, rounds: int) -> None:
    """Per round: one search, one divide (b = 0 every third round), one fetch_quote."""
    for number in range(rounds):
        await client.call_tool("search", {"query": str(number)})
        await client.call_tool("divide", {"a": 1, "b": number % 3})
        await client.call_tool("fetch_quote", {"symbol": "ACME"})
    await client.get_prompt("summarize", {"topic": "tests"})


def check_on_disk(path: Path, rounds: int) -> None:
    """What call_everything must leave in the session file."""
    document = read_json(path)
    stats, tools = document["stats"], document["tools"]
    assert stats["toolCalls"] == 3 * rounds
    assert stats["promptCalls"] == 1
    failures = len(range(0, rounds, 3))
    assert stats["errors"] == failures
    assert tools["search"]["calls"] == tools["divide"]["calls"] == rounds
    assert tools["fetch_quote"]["calls"] == rounds
    assert tools["divide"]["errors"] == failures
    assert tools["fetch_quote"]["errors"] == 0
    assert tools["fetch_quote"]["rateLimits"] == stats["rateLimits"]


class TestLifespan:
    async def test_the_store_opens_and_closes_with_the_server(self, session_path: Path) -> None:
        """Calls through an in-process client land in the file once the server stops."""
        async with Client(build_server(str(session_path))) as client:
            await call_everything(client, rounds=6)
        check_on_disk(session_path, rounds=6)

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
            async with session_store(ctx).tool_call("answer"):
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

    async def test_the_store_is_an_async_session_store(self, session_path: Path) -> None:
        """Without app_lifespan the lifespan context is the store itself."""
        async with session_lifespan(str(session_path))(None) as store:
            assert isinstance(store, AsyncSessionStore)


def stdio(session: Path, *extra: str) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=[str(SERVERS), str(session), *extra])


@pytest.mark.slow
class TestOverStdio:
    async def test_counts_after_a_normal_client_exit(self, session_path: Path) -> None:
        """The client closes stdin; the server flushes on its way out."""
        async with Client(stdio(session_path)) as client:
            await call_everything(client, rounds=9)
        check_on_disk(session_path, rounds=9)

    async def test_counts_after_the_clients_sigterm_escalation(self, session_path: Path) -> None:
        """A server stuck in shutdown gets SIGTERM from the client: it flushes, then dies."""
        async with Client(stdio(session_path, "stall")) as client:
            await call_everything(client, rounds=4)
        check_on_disk(session_path, rounds=4)

    async def test_two_servers_on_one_session_lose_nothing(self, session_path: Path) -> None:
        """Two clients, each with its own server process, at once on one session file."""

        async def one_client() -> None:
            async with Client(stdio(session_path)) as client:
                for number in range(20):
                    await client.call_tool("search", {"query": str(number)})

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(one_client)
            tasks.start_soon(one_client)
        document = read_json(session_path)
        assert document["stats"]["toolCalls"] == 40
        assert document["tools"]["search"]["calls"] == 40


def test_the_core_does_not_import_mcp() -> None:
    """`import aiosessionstore` leaves the SDK (about 0.4 s of imports) unloaded."""
    code = "import sys, aiosessionstore; sys.exit('mcp' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
