"""Hypothesis, stateful: whatever happens to a store, the disk holds what a simple model says.

The model knows two things: the counts on disk, and the counts pending in the store. A flush or
a clean close moves pending to disk; reset and new_session zero both; a crash (the process gone
before it could flush) loses the pending counts and nothing else.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import AbstractContextManager
from pathlib import Path

from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from aiosessionstore import AsyncSessionStore, SessionStats

from .conftest import read_json

COUNTERS = ("tool_calls", "prompt_calls", "errors", "rate_limits")
JSON_KEYS = ("toolCalls", "promptCalls", "errors", "rateLimits")


class SessionMachine(RuleBasedStateMachine):
    """One session file, one store at a time, run on an event loop in a portal thread."""

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp())
        self.path = self.directory / "session.json"
        self.portal_cm = start_blocking_portal("asyncio")
        self.portal: BlockingPortal = self.portal_cm.__enter__()
        self.on_disk = dict.fromkeys(COUNTERS, 0)
        self.pending = dict.fromkeys(COUNTERS, 0)
        self.open_store()

    def open_store(self) -> None:
        self.store = AsyncSessionStore(self.path, flush_interval=3600, handle_signals=False)
        self.block: AbstractContextManager[AsyncSessionStore] = (
            self.portal.wrap_async_context_manager(self.store)
        )
        self.block.__enter__()

    def settle(self) -> None:
        for name in COUNTERS:
            self.on_disk[name] += self.pending[name]
        self.pending = dict.fromkeys(COUNTERS, 0)

    @rule(counter=st.sampled_from(COUNTERS), count=st.integers(0, 1_000))
    def increment(self, counter: str, count: int) -> None:
        self.portal.call(getattr(self.store, f"increment_{counter}"), count)
        self.pending[counter] += count

    @rule(counts=st.tuples(*[st.integers(0, 50)] * 4))
    def update_stats(self, counts: tuple[int, int, int, int]) -> None:
        self.portal.call(
            lambda: self.store.update_stats(**dict(zip(COUNTERS, counts, strict=True)))
        )
        for name, count in zip(COUNTERS, counts, strict=True):
            self.pending[name] += count

    @rule()
    def flush(self) -> None:
        self.portal.call(self.store.flush)
        self.settle()
        self.check_disk()

    @rule()
    def reset(self) -> None:
        self.portal.call(self.store.reset_stats)
        self.on_disk = dict.fromkeys(COUNTERS, 0)
        self.pending = dict.fromkeys(COUNTERS, 0)
        self.check_disk()

    @rule()
    def new_session(self) -> None:
        old_id = self.store.session_id
        self.portal.call(self.store.new_session)
        assert self.store.session_id != old_id
        self.reset_model()

    @rule()
    def reopen(self) -> None:
        self.block.__exit__(None, None, None)
        self.settle()
        self.check_disk()
        self.open_store()

    @precondition(lambda self: any(self.pending.values()))
    @rule()
    def crash(self) -> None:
        """The process dies with counts pending: they are lost, and nothing else is."""
        # What a fork does to the child's copy: drop the pending counts, write nothing.
        self.portal.call(self.store._detach)
        self.block.__exit__(None, None, None)
        self.pending = dict.fromkeys(COUNTERS, 0)
        self.check_disk()
        self.open_store()

    def reset_model(self) -> None:
        self.on_disk = dict.fromkeys(COUNTERS, 0)
        self.pending = dict.fromkeys(COUNTERS, 0)
        self.check_disk()

    @invariant()
    def the_view_is_disk_plus_pending(self) -> None:
        expected = {name: self.on_disk[name] + self.pending[name] for name in COUNTERS}
        assert self.store.session.stats == SessionStats(**expected)

    def check_disk(self) -> None:
        stats = read_json(self.path)["stats"]
        assert [stats[key] for key in JSON_KEYS] == [self.on_disk[name] for name in COUNTERS]

    def teardown(self) -> None:
        try:
            self.block.__exit__(None, None, None)
            self.settle()
            self.check_disk()
        finally:
            self.portal_cm.__exit__(None, None, None)
            shutil.rmtree(self.directory)


SessionMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
TestSessionMachine = SessionMachine.TestCase
