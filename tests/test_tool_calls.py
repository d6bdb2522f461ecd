"""store.tool_call(name): per-tool stats, outcomes and timing, merged like the counters."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiosessionstore import AsyncSessionStore, ClientStats, SessionStats, ToolStats, _names
from aiosessionstore._codec import encode
from aiosessionstore._file import MAX_FILE_SIZE
from aiosessionstore._latency import BUCKETS, bucket
from aiosessionstore._names import OTHER, check_name, merge_capped
from aiosessionstore._pending import Calls
from aiosessionstore._session import MAX_COUNT, Record, Session

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
            lookup = store.session.tools["lookup"]
            assert (lookup.calls, lookup.errors, lookup.rate_limits) == (1, 1, 0)
            assert sum(lookup.latency.values()) == 1

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


BAD_NAMES = [
    "",
    "x" * 129,
    "x" * 1_000_000,
    "x\ud800",
    "\udfff",
    "tab\there",
    "new\nline",
    "\x1b]0;title\x07",
    "nul\x00",
    "del\x7f",
    "c1\x85",
    "(other)",
]


class TestToolNames:
    @pytest.mark.parametrize("name", BAD_NAMES)
    async def test_a_bad_name_is_refused_at_the_call(self, session_path: Path, name: str) -> None:
        """A name no file can keep safely is a ValueError where it is given."""
        async with AsyncSessionStore(session_path) as store:
            with pytest.raises(ValueError, match="tool name"):
                store.tool_call(name)

    async def test_a_name_that_is_not_a_string_is_a_type_error(self, session_path: Path) -> None:
        """Bytes are not a name: a TypeError at once."""
        async with AsyncSessionStore(session_path) as store:
            with pytest.raises(TypeError, match="tool name"):
                store.tool_call(b"search")  # type: ignore[arg-type]

    @pytest.mark.parametrize("name", BAD_NAMES)
    async def test_a_refused_name_puts_no_other_count_at_risk(
        self, session_path: Path, name: str
    ) -> None:
        """After a refused name, every flush and the close still write every count."""
        async with AsyncSessionStore(session_path) as store:
            await store.increment_tool_calls(2)
            with pytest.raises(ValueError, match="tool name"):
                async with store.tool_call(name):
                    pass
            async with store.tool_call("search"):
                pass
            await store.flush()
            await store.increment_errors()
        document = await anyio.to_thread.run_sync(read_json, session_path)
        assert document["stats"]["toolCalls"] == 3
        assert document["stats"]["errors"] == 1
        assert list(document["tools"]) == ["search"]

    @pytest.mark.parametrize("name", ["search", "x" * 128, "naïve_工具", "a.b-c_d", "emoji🙂"])
    async def test_good_names_are_kept_as_given(self, session_path: Path, name: str) -> None:
        """Names up to 128 characters, in any script, are stored as they are."""
        async with AsyncSessionStore(session_path) as store, store.tool_call(name):
            pass
        assert list(await tools_on_disk(session_path)) == [name]

    def test_a_name_checked_before_is_checked_alike(self) -> None:
        """A good name is remembered, and passes again as itself; a bad one never is."""
        assert check_name("search") == check_name("search", "prompt") == "search"
        assert "search" in _names._PASSED
        for _ in range(2):
            with pytest.raises(ValueError, match="prompt names in parentheses"):
                check_name("(mine)", "prompt")
            with pytest.raises(TypeError, match="a tool name must be a str"):
                check_name(b"search")

    def test_the_names_remembered_are_bounded(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """However many good names come in, a bounded number is remembered."""
        monkeypatch.setattr(_names, "_PASSED", set())
        names = [f"tool-{number}" for number in range(_names._PASSED_MAX + 100)]
        assert [check_name(name) for name in names] == names
        assert len(_names._PASSED) == _names._PASSED_MAX
        assert check_name(names[-1]) == names[-1]  # past the bound: checked in full instead


def bucket_as_defined(ms: float) -> int:
    """The bucket as the file format defines it (the first, plainest implementation)."""
    microseconds = ms * 1000
    if not microseconds > 1:
        return 0
    if microseconds == math.inf:
        return BUCKETS - 1
    return min(BUCKETS - 1, math.ceil(4 * math.log2(microseconds)))


def bucket_timed(ms: float) -> int:
    """The bucket a pending call's timing counts ``ms`` in (its own copy of bucket())."""
    calls = Calls()
    calls.timed(ms)
    [(index, count)] = calls.latency.items()
    assert count == 1
    return index


class TestLatencyBuckets:
    @given(st.floats())
    def test_any_time_lands_in_the_bucket_the_format_defines(self, ms: float) -> None:
        """bucket(), and the timing of a call, agree with the format's definition for every
        float."""
        assert bucket(ms) == bucket_timed(ms) == bucket_as_defined(ms)

    @pytest.mark.parametrize("index", range(BUCKETS))
    def test_the_edges_of_every_bucket(self, index: int) -> None:
        """Each bucket's upper edge, and the floats either side of it, land as defined."""
        edge = 2 ** (index / 4) / 1000
        for ms in (math.nextafter(edge, 0), edge, math.nextafter(edge, math.inf)):
            assert bucket(ms) == bucket_timed(ms) == bucket_as_defined(ms)


class TestToolNameCap:
    async def test_names_past_the_cap_are_counted_under_other(self, session_path: Path) -> None:
        """With max_tools=3, the fourth and later names share one entry; totals stay exact."""
        async with AsyncSessionStore(session_path, max_tools=3) as store:
            for number in range(10):
                async with store.tool_call(f"tool{number}"):
                    pass
            assert set(store.session.tools) == {"tool0", "tool1", "tool2", OTHER}
        tools = await tools_on_disk(session_path)
        assert set(tools) == {"tool0", "tool1", "tool2", OTHER}
        assert tools[OTHER]["calls"] == 7
        assert sum(tool["calls"] for tool in tools.values()) == 10
        document = await anyio.to_thread.run_sync(read_json, session_path)
        assert document["stats"]["toolCalls"] == 10

    async def test_the_cap_holds_across_stores_and_flushes(self, session_path: Path) -> None:
        """Names merged from several stores and flushes never take the file past the cap."""
        for first in range(0, 12, 4):
            async with AsyncSessionStore(session_path, max_tools=5) as store:
                for number in range(first, first + 4):
                    async with store.tool_call(f"tool{number}"):
                        pass
                    await store.flush()
        tools = await tools_on_disk(session_path)
        assert len(tools) == 6
        assert tools[OTHER]["calls"] == 7
        assert sum(tool["calls"] for tool in tools.values()) == 12

    async def test_a_name_already_kept_is_still_counted_as_itself(self, session_path: Path) -> None:
        """At the cap, the names the file has keep their own entries."""
        async with AsyncSessionStore(session_path, max_tools=2) as store:
            for name in ("a", "b", "c", "a", "b"):
                async with store.tool_call(name):
                    pass
        tools = await tools_on_disk(session_path)
        assert (tools["a"]["calls"], tools["b"]["calls"], tools[OTHER]["calls"]) == (2, 2, 1)

    async def test_a_kept_name_stays_itself_however_many_new_names_are_pending(
        self, session_path: Path
    ) -> None:
        """The cap in memory yields to the names the file already keeps."""
        async with AsyncSessionStore(session_path, max_tools=3) as store:
            for name in ("a", "b", "c"):
                async with store.tool_call(name):
                    pass
        async with AsyncSessionStore(session_path, max_tools=3) as store:
            for name in ("x", "y", "z", "w", "b"):
                async with store.tool_call(name):
                    pass
        tools = await tools_on_disk(session_path)
        assert (tools["b"]["calls"], tools[OTHER]["calls"]) == (2, 4)

    async def test_the_default_cap_bounds_the_file(self, session_path: Path) -> None:
        """20,000 distinct names leave 1,001 entries and a file well under a megabyte."""
        async with AsyncSessionStore(session_path) as store:
            for number in range(20_000):
                async with store.tool_call(f"tool-{number:05d}"):
                    pass
            await store.flush()
            assert len(store.session.tools) == 1001
        assert len(await tools_on_disk(session_path)) == 1001
        assert (await anyio.Path(session_path).stat()).st_size < 300_000

    def test_the_worst_session_at_the_cap_can_still_be_written(self) -> None:
        """Every kind full, every name 128 four-byte characters, every bucket used, every
        count at its maximum: the file stays under the bound the store reads."""
        latency = dict.fromkeys(range(BUCKETS), MAX_COUNT)
        worst = ToolStats(MAX_COUNT, MAX_COUNT, MAX_COUNT, 1e308, 1e308, latency)
        names = [f"{number:04d}" + "\U0001f600" * 124 for number in range(1000)] + [OTHER]
        client = ClientStats(MAX_COUNT, MAX_COUNT)
        moment = datetime.now(timezone.utc)
        session = Session(
            1, "x" * 36, moment, moment, SessionStats(),
            dict.fromkeys(names, worst), dict.fromkeys(names, worst),
            dict.fromkeys(names, client),
        )  # fmt: skip
        assert len(encode(Record(session))) < MAX_FILE_SIZE

    @pytest.mark.parametrize("cap", [0, -1, 1_001, True, 1.5])
    def test_a_bad_cap_is_refused(self, session_path: Path, cap: object) -> None:
        """max_tools is a whole number from 1 to 1,000, the default."""
        with pytest.raises((TypeError, ValueError), match="max_tools"):
            AsyncSessionStore(session_path, max_tools=cap)  # type: ignore[arg-type]


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
        merged = merge_capped({"search": ToolStats(1, 0, 0, 5.0, 5.0)},
                             {"search": ToolStats(1, 1, 0, 3.0, 3.0)}, cap=10)  # fmt: skip
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
