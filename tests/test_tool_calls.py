"""store.tool_call(name): per-tool stats, outcomes and timing, merged like the counters."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from aiosessionstore import AsyncSessionStore, SessionStats, ToolStats
from aiosessionstore._session import add_tools

from .conftest import read_json

pytestmark = pytest.mark.anyio


class RateLimited(Exception):
    pass


class Throttled(Exception):
    pass


async def tools_on_disk(path: Path) -> dict[str, dict[str, float]]:
    document = await anyio.to_thread.run_sync(read_json, path)
    tools = document.get("tools", {})
    assert isinstance(tools, dict)
    return tools


class TestToolCall:
    async def test_a_call_counts_once_and_per_tool(self, session_path: Path) -> None:
        """A call adds one tool call overall and one call to that tool, and is timed."""
        async with AsyncSessionStore(session_path) as store:
            async with store.tool_call("search"):
                pass
            async with store.tool_call("search"):
                pass
            async with store.tool_call("fetch"):
                pass
            session = store.session
            assert session.stats.tool_calls == 3
            assert session.tools["search"].calls == 2
            assert session.tools["fetch"].calls == 1
        tools = await tools_on_disk(session_path)
        assert set(tools) == {"search", "fetch"}
        assert tools["search"]["calls"] == 2
        assert tools["search"]["errors"] == tools["search"]["rateLimits"] == 0
        assert 0 <= tools["search"]["maxMs"] <= tools["search"]["totalMs"]

    async def test_an_exception_is_an_error_and_re_raised(self, session_path: Path) -> None:
        """The body's exception counts an error, overall and for the tool, and propagates."""
        async with AsyncSessionStore(session_path) as store:
            with pytest.raises(KeyError):
                async with store.tool_call("lookup"):
                    raise KeyError("missing")
            assert store.session.stats == SessionStats(tool_calls=1, errors=1)
            assert store.session.tools["lookup"] == ToolStats(
                calls=1,
                errors=1,
                total_ms=store.session.tools["lookup"].total_ms,
                max_ms=store.session.tools["lookup"].max_ms,
            )

    async def test_a_rate_limit_exception_is_a_rate_limit(self, session_path: Path) -> None:
        """Exceptions of the store's rate-limit types count a rate limit, not an error."""
        async with AsyncSessionStore(session_path, rate_limit_errors=(RateLimited,)) as store:
            with pytest.raises(RateLimited):
                async with store.tool_call("api"):
                    raise RateLimited
            assert store.session.stats == SessionStats(tool_calls=1, rate_limits=1)
            assert store.session.tools["api"].rate_limits == 1
            assert store.session.tools["api"].errors == 0

    async def test_the_rate_limit_types_can_be_set_per_call(self, session_path: Path) -> None:
        """A per-call tuple replaces the store's for that call."""
        async with AsyncSessionStore(session_path, rate_limit_errors=(RateLimited,)) as store:
            with pytest.raises(Throttled):
                async with store.tool_call("api", rate_limit_errors=(Throttled,)):
                    raise Throttled
            with pytest.raises(RateLimited):
                async with store.tool_call("api", rate_limit_errors=(Throttled,)):
                    raise RateLimited
            assert store.session.stats == SessionStats(tool_calls=2, errors=1, rate_limits=1)

    async def test_a_cancelled_call_is_not_an_error(self, session_path: Path) -> None:
        """Cancellation is not the tool failing: counted as a call, timed, no error."""
        async with AsyncSessionStore(session_path) as store:
            with anyio.move_on_after(0):
                async with store.tool_call("slow"):
                    await anyio.sleep_forever()
            assert store.session.stats == SessionStats(tool_calls=1)
            assert store.session.tools["slow"].calls == 1

    async def test_usable_as_a_decorator(self, session_path: Path) -> None:
        """@store.tool_call(name) counts each call, also when calls overlap."""
        async with AsyncSessionStore(session_path) as store:

            @store.tool_call("echo")
            async def echo(text: str) -> str:
                await anyio.lowlevel.checkpoint()
                return text

            async with anyio.create_task_group() as tasks:
                for number in range(10):
                    tasks.start_soon(echo, str(number))
            assert await echo("hi") == "hi"
            assert store.session.tools["echo"].calls == 11

    async def test_a_tool_name_must_be_a_string(self, session_path: Path) -> None:
        """An empty or non-string name is a mistake caught at once."""
        async with AsyncSessionStore(session_path) as store:
            with pytest.raises(ValueError, match="tool name"):
                store.tool_call("")


class TestToolStatsOnDisk:
    async def test_merged_across_stores_like_the_counters(self, session_path: Path) -> None:
        """Two stores' per-tool numbers add up on disk."""
        async with (
            AsyncSessionStore(session_path) as first,
            AsyncSessionStore(session_path) as second,
        ):
            async with first.tool_call("search"):
                pass
            async with second.tool_call("search"):
                pass
            async with second.tool_call("fetch"):
                pass
        tools = await tools_on_disk(session_path)
        assert tools["search"]["calls"] == 2
        assert tools["fetch"]["calls"] == 1

    async def test_merging_adds_times_and_keeps_the_longest_call(self) -> None:
        """Totals add; the longest call is the longer of the two, not their sum."""
        merged = add_tools({"search": ToolStats(1, 0, 0, 5.0, 5.0)},
                           {"search": ToolStats(1, 1, 0, 3.0, 3.0)})  # fmt: skip
        assert merged["search"] == ToolStats(2, 1, 0, 8.0, 5.0)

    async def test_reset_clears_them(self, session_path: Path) -> None:
        """reset_stats() zeroes the per-tool stats with the counters."""
        async with AsyncSessionStore(session_path) as store:
            async with store.tool_call("search"):
                pass
            await store.flush()
            session = await store.reset_stats()
            assert session.tools == {}
        assert "tools" not in await anyio.to_thread.run_sync(read_json, session_path)

    async def test_a_session_without_tools_has_no_tools_key(self, session_path: Path) -> None:
        """The file stays exactly the seed's shape until a tool call is counted."""
        async with AsyncSessionStore(session_path) as store:
            await store.increment_tool_calls()
        document = await anyio.to_thread.run_sync(read_json, session_path)
        assert list(document) == ["version", "sessionId", "createdAt", "lastActiveAt", "stats"]

    async def test_a_malformed_tools_section_is_corrupt(self, session_path: Path) -> None:
        """Negative or non-numeric per-tool values are damage: the file is moved aside."""
        async with AsyncSessionStore(session_path):
            pass
        document = await anyio.to_thread.run_sync(read_json, session_path)
        document["tools"] = {"x": {"calls": -1, "errors": 0, "rateLimits": 0, "totalMs": 0,
                                   "maxMs": 0}}  # fmt: skip
        await anyio.Path(session_path).write_text(json.dumps(document))
        async with AsyncSessionStore(session_path) as store:
            assert store.session.tools == {}
        assert [p async for p in anyio.Path(session_path.parent).glob("*.corrupt-*")]
