"""Hypothesis: any interleaving of updates, resets, flushes and reopens adds up as a model says."""

from __future__ import annotations

import tempfile
from pathlib import Path

import anyio
from hypothesis import given, settings
from hypothesis import strategies as st

from aiosessionstore import AsyncSessionStore, SessionStats

from .conftest import read_json

COUNTERS = ("tool_calls", "prompt_calls", "errors", "rate_limits")

operations = st.lists(
    st.one_of(
        st.tuples(st.just("increment"), st.sampled_from(COUNTERS), st.integers(0, 1_000)),
        st.tuples(st.just("flush")),
        st.tuples(st.just("reset")),
        st.tuples(st.just("new_session")),
        st.tuples(st.just("reopen")),
    ),
    max_size=30,
)


async def play(path: Path, steps: list[tuple[object, ...]]) -> dict[str, int]:
    """Run the steps on a store, checking its view after each; return the model's counts."""
    expected = dict.fromkeys(COUNTERS, 0)
    store = AsyncSessionStore(path)
    await store.__aenter__()
    try:
        for step in steps:
            if step[0] == "increment":
                name, count = str(step[1]), int(str(step[2]))
                await getattr(store, f"increment_{name}")(count)
                expected[name] += count
            elif step[0] == "flush":
                await store.flush()
            elif step[0] in ("reset", "new_session"):
                await (store.reset_stats() if step[0] == "reset" else store.new_session())
                expected = dict.fromkeys(COUNTERS, 0)
            else:
                await store.__aexit__(None, None, None)
                store = AsyncSessionStore(path)
                await store.__aenter__()
            assert store.session.stats == SessionStats(**expected)
    finally:
        await store.__aexit__(None, None, None)
    return expected


@settings(max_examples=60, deadline=None)
@given(operations)
def test_counts_on_disk_match_the_model(steps: list[tuple[object, ...]]) -> None:
    """Whatever the order of operations, disk and view hold exactly the model's counts."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "session.json"
        expected = anyio.run(play, path, steps)
        stats = read_json(path)["stats"]
        on_disk = [stats[key] for key in ("toolCalls", "promptCalls", "errors", "rateLimits")]
        assert on_disk == [expected[name] for name in COUNTERS]
