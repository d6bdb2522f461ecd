"""The store over any backend: the shared behaviour suite, and the exactly-once logic above it."""

from __future__ import annotations

import asyncio
import json

import anyio
import pytest

from aiosessionstore import (
    AsyncSessionStore,
    SessionStoreError,
    UnsupportedVersionError,
)
from aiosessionstore._backend import Backend
from aiosessionstore._codec import decode, encode

from .conftest import Faulty, MemoryBackend, Place, RepliesLost

pytestmark = pytest.mark.anyio

NEWER = json.dumps(
    {
        "version": 2,
        "sessionId": "6f1c2a4e-9d3b-4c1a-8e2f-0a1b2c3d4e5f",
        "createdAt": "2026-11-20T08:00:00.000Z",
        "lastActiveAt": "2026-11-25T15:06:07.123Z",
        "stats": {"toolCalls": 1, "promptCalls": 0, "errors": 0, "rateLimits": 0},
        "future": True,
    },
    indent=2,
).encode()


def store_on(place: Place) -> AsyncSessionStore:
    return AsyncSessionStore(backend=place.backend(), flush_interval=3600, handle_signals=False)


def stored(place: Place) -> dict[str, object]:
    data = place.get()
    assert data is not None, "nothing stored"
    stats: dict[str, object] = json.loads(data)
    return stats


class TestSharedBehaviour:
    async def test_stores_opened_at_once_share_one_session(self, place: Place) -> None:
        """Opening creates exactly one session, however many stores open it at once."""
        stores = [store_on(place) for _ in range(6)]
        async with anyio.create_task_group() as tasks:
            for store in stores:
                tasks.start_soon(store.open)
        ids = {store.session_id for store in stores}
        for store in stores:
            await store.aclose()
        assert ids == {stored(place)["sessionId"]}

    async def test_counts_of_many_stores_add_up_exactly(self, place: Place) -> None:
        """Every increment of every store is stored once."""

        async def count(store: AsyncSessionStore) -> None:
            async with store:
                for _ in range(50):
                    await store.increment_tool_calls()
                    async with store.tool_call("search", client="cli"):
                        pass
                    await store.flush()

        async with anyio.create_task_group() as tasks:
            for _ in range(4):
                tasks.start_soon(count, store_on(place))
        session = decode(place.get() or b"").session
        assert session.stats.tool_calls == 400
        assert session.tools["search"].calls == 200
        assert session.clients["cli"].tool_calls == 200

    async def test_tool_prompt_and_client_stats_merge(self, place: Place) -> None:
        """Per-name stats and latency buckets of two stores add up in the stored session."""
        for _ in range(2):
            async with store_on(place) as store:
                async with store.prompt_call("review", client="ide"):
                    pass
                async with store.tool_call("search", client="ide"):
                    pass
        session = decode(place.get() or b"").session
        assert session.prompts["review"].calls == 2
        assert session.tools["search"].calls == 2
        assert session.clients["ide"].tool_calls == 2
        assert session.clients["ide"].prompt_calls == 2
        assert sum(session.tools["search"].latency.values()) == 2

    async def test_reset_keeps_the_id_and_new_session_changes_it(self, place: Place) -> None:
        """reset_stats zeroes the stored counts under the same id; new_session starts another."""
        async with store_on(place) as store:
            await store.increment_errors(3)
            await store.flush()
            first = store.session_id
            await store.reset_stats()
            assert stored(place)["sessionId"] == first
            assert stored(place)["stats"] == {
                "toolCalls": 0,
                "promptCalls": 0,
                "errors": 0,
                "rateLimits": 0,
            }
            await store.new_session()
            assert stored(place)["sessionId"] == store.session_id != first

    async def test_a_deleted_session_never_comes_back(self, place: Place) -> None:
        """A store that saw the session stored starts a new one after another deletes it."""
        async with store_on(place) as keeper, store_on(place) as deleter:
            old = keeper.session_id
            assert await deleter.delete()
            assert place.get() is None
            await keeper.increment_tool_calls()
            await keeper.flush()
            assert stored(place)["sessionId"] == keeper.session_id != old

    async def test_a_failed_delete_keeps_the_counts_of_a_failed_flush(self, place: Place) -> None:
        """A delete that fails after a flush failed keeps that flush's counts, which land
        once the fault clears, in the session that was not deleted."""
        backend = Faulty(place.backend())
        store = AsyncSessionStore(backend=backend, flush_interval=3600, handle_signals=False)
        async with store:
            first = store.session_id
            await store.increment_tool_calls(7)
            backend.failing = True
            with pytest.raises(SessionStoreError, match="out of reach"):
                await store.flush()
            with pytest.raises(SessionStoreError, match="out of reach"):
                await store.delete()
            assert store.session.stats.tool_calls == 7
            backend.failing = False
            await store.increment_tool_calls()
            await store.flush()
        assert stored(place)["sessionId"] == first
        assert stored(place)["stats"]["toolCalls"] == 8  # type: ignore[index]

    async def test_a_newer_version_is_refused_and_left_untouched(self, place: Place) -> None:
        """A session a newer release wrote is neither read nor written over."""
        place.put(NEWER)
        with pytest.raises(UnsupportedVersionError):
            await store_on(place).open()
        assert place.get() == NEWER

    @pytest.mark.parametrize(
        "bad",
        [b"{not json", b'{"version": 1, "sessionId": 5}', b"[]", b"\xff\xfe"],
        ids=["syntax", "types", "array", "bytes"],
    )
    async def test_malformed_data_is_moved_aside_never_overwritten(
        self, place: Place, bad: bytes
    ) -> None:
        """Bad data is kept aside, byte for byte, and a valid session takes its place."""
        place.put(bad)
        async with store_on(place) as store:
            await store.increment_tool_calls()
        assert place.set_aside() == [bad]
        assert stored(place)["stats"]["toolCalls"] == 1  # type: ignore[index]

    async def test_what_is_stored_is_the_file_format(self, place: Place) -> None:
        """Any backend stores the TypeScript tool's JSON, as the file backend writes it."""
        async with store_on(place) as store:
            await store.increment_tool_calls(2)
        data = place.get()
        assert data is not None
        assert encode(decode(data)) == data


class TestBackendChoice:
    def test_a_backend_that_is_none_is_refused(self) -> None:
        """backend= takes only something that implements Backend."""
        with pytest.raises(TypeError, match="Backend"):
            AsyncSessionStore(backend=object())  # type: ignore[arg-type]

    def test_path_and_backend_together_are_refused(self, tmp_path: object) -> None:
        """Two places for one session is a mistake, said at once."""
        with pytest.raises(ValueError, match="path and backend"):
            AsyncSessionStore("session.json", backend=MemoryBackend())

    @pytest.mark.parametrize("place", [{"url": ""}, {"path": ""}, {"path": "", "url": "redis://h"}])
    def test_an_empty_place_is_refused(self, place: dict[str, str]) -> None:
        """An empty path or URL (an unset variable, say) is a mistake, not "use the default"."""
        with pytest.raises(ValueError, match="is empty"):
            AsyncSessionStore(**place)  # type: ignore[arg-type]

    def test_the_memory_backend_is_a_backend(self) -> None:
        """The seam needs no file: the test double implements the protocol."""
        assert isinstance(MemoryBackend(), Backend)


class TestExactlyOnce:
    async def test_a_merge_whose_reply_was_lost_is_stored_once(self) -> None:
        """A merge applied but not acknowledged is sent again as it was, and counted once."""
        backend = RepliesLost(losses=0)
        async with AsyncSessionStore(backend=backend, handle_signals=False) as store:
            await store.increment_tool_calls(5)
            backend.losses = 1
            with pytest.raises(SessionStoreError, match="before the reply"):
                await store.flush()
            assert store.session.stats.tool_calls == 5
            await store.flush()
        assert backend.peek().session.stats.tool_calls == 5

    async def test_no_later_change_goes_before_a_failed_one(self) -> None:
        """Counts made after a failed merge wait for it: the change in doubt goes first."""
        backend = RepliesLost(losses=0)
        async with AsyncSessionStore(backend=backend, handle_signals=False) as store:
            await store.increment_tool_calls(5)
            backend.losses = 1
            with pytest.raises(SessionStoreError):
                await store.flush()
            await store.increment_tool_calls(2)
            calls = backend.calls
            await store.flush()
            assert backend.calls == calls + 2  # the one in doubt, then the new one
        assert backend.peek().session.stats.tool_calls == 7

    async def test_a_cancelled_flush_whose_reply_was_lost_counts_once(self) -> None:
        """A caller cancelled while its merge is in doubt changes nothing: stored once."""
        backend = RepliesLost(losses=0)
        async with AsyncSessionStore(backend=backend, handle_signals=False) as store:
            await store.increment_tool_calls(4)
            backend.losses = 1
            flush = asyncio.ensure_future(store.flush())
            await asyncio.sleep(0)
            flush.cancel()
            with pytest.raises(asyncio.CancelledError):
                await flush
        assert backend.peek().session.stats.tool_calls == 4

    async def test_a_final_flush_whose_reply_was_lost_says_not_known(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A final flush that fails may have been applied (its reply lost): the log says
        its counts are not known to be saved, not that they were not."""
        backend = RepliesLost(losses=0)
        store = AsyncSessionStore(backend=backend, handle_signals=False)
        await store.open()
        await store.increment_tool_calls(5)
        backend.losses = 1
        with pytest.raises(SessionStoreError):
            await store.aclose()
        assert "final flush of session in memory failed; not known to be saved: 5" in caplog.text
        assert backend.peek().session.stats.tool_calls == 5  # it was, this time
        store._flush_sync()  # what the exit hook runs: sent again, counted once
        assert backend.peek().session.stats.tool_calls == 5

    async def test_counts_the_exit_cannot_send_are_named(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """At exit, counts made after a merge in doubt wait for it; when it fails again they
        are not sent, and the log names them as lost, beside the merge's own."""
        backend = RepliesLost(losses=0)
        async with AsyncSessionStore(backend=backend, handle_signals=False) as store:
            await store.increment_tool_calls(5)
            backend.losses = 1
            with pytest.raises(SessionStoreError):
                await store.flush()
            await store.increment_tool_calls(2)
            backend.losses = 1
            store._flush_sync()  # what the exit hook runs
            assert "its counts are not known to be saved (5 tool calls" in caplog.text
            assert (
                "the counts made after a write that did not land are not sent at exit, and are "
                "lost: 2 tool calls" in caplog.text
            )
        assert backend.peek().session.stats.tool_calls == 7  # the process lived on: all sent

    async def test_a_failed_reset_gives_its_counts_back(self) -> None:
        """A reset that failed is not sent again; the counts it would drop are merged later."""
        backend = RepliesLost(losses=0)
        async with AsyncSessionStore(backend=backend, handle_signals=False) as store:
            await store.increment_errors(2)
            backend.losses = 1
            with pytest.raises(SessionStoreError):
                await store.reset_stats()
        assert backend.peek().session.stats.errors == 2
