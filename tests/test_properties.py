"""Hypothesis: invariants of the session file's codec and of a store's life.

The codec: whatever valid JSON a file holds, decode adopts it, to be written back as strict JSON
that decodes to the same record, or calls it corrupt; it never raises anything else.

The store, stateful: the disk holds what a simple model says. The model knows two things: the
counts on disk, and the counts pending in the store. A flush or a clean close moves pending to
disk; reset and new_session zero both; a crash (the process gone before it could flush) loses
the pending counts and nothing else.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from aiosessionstore import AsyncSessionStore, SessionStats
from aiosessionstore._codec import _loads_in_steps, decode, encode
from aiosessionstore._errors import CorruptSessionError, UnsupportedVersionError

from .conftest import read_json

#: JSON text that is valid but odd: what JSON.parse refuses, numbers at and past the limits
#: of a double and a safe integer, lone surrogates, deep nesting, timestamps at the edges.
ODD_VALUES = (
    *("NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e308", "-0", "0.0", "5.0", "1e2"),
    *(str(2**53 - 1), str(2**53), "9" * 300, "9" * 400, "9" * 5000, "-1", "2", "1.5"),
    *('"\\ud800"', '"a\\udfff"', '"\\ud83d\\ude00"', '"\\u0000"', '""', '"x"'),
    *("null", "true", "[]", "{}", "[" * 63 + "]" * 63, "[" * 64 + "]" * 64, "[" * 3000),
    *('"2026-11-20T08:00:00.000Z"', '"0001-01-01T00:00:00+01:00"', '"2026-11-20T08:00Z"'),
    *('"9999-12-31T23:59:59.999-00:01"', '"2026-11-20 08:00:00Z"', '"2026-W47-5T08:00Z"'),
)
ODD_KEYS = ("x", "\\ud800", "\\udfff\\ud800", "\\ud83d\\ude00", "", "__proto__", "stats")

#: A valid session whose leaves are JSON text, so that any leaf can be made odd.
TEMPLATE: dict[str, Any] = {
    "version": "1",
    "sessionId": '"6f1c2a4e-9d3b-4c1a-8e2f-0a1b2c3d4e5f"',
    "createdAt": '"2026-11-20T08:00:00.000Z"',
    "lastActiveAt": '"2026-11-25T15:06:07.123Z"',
    "stats": {"toolCalls": "42", "promptCalls": "7", "errors": "3", "rateLimits": "1"},
    "tools": {
        "t": {"calls": "2", "errors": "0", "rateLimits": "0", "totalMs": "3.5", "maxMs": "2"}
    },
}


def render(value: dict[str, Any] | str) -> str:
    """JSON text of a template: objects rendered, leaves as they are."""
    if isinstance(value, str):
        return value
    return "{" + ", ".join(f'"{key}": {render(item)}' for key, item in value.items()) + "}"


def member_paths(value: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every member of the template, objects included, as a path of keys."""
    paths = []
    for key, item in value.items():
        paths.append((*prefix, key))
        if isinstance(item, dict):
            paths += member_paths(item, (*prefix, key))
    return paths


def replaced(template: dict[str, Any] | str, path: tuple[str, ...], text: str) -> dict[str, Any]:
    """The template with the member at ``path`` (made if missing) set to ``text``."""
    copy = dict(template) if isinstance(template, dict) else {}  # a leaf made an object again
    head, *rest = path
    copy[head] = replaced(copy.get(head, {}), tuple(rest), text) if rest else text
    return copy


MEMBER_PATHS = member_paths(TEMPLATE)
OBJECT_PATHS = [(), ("stats",), ("tools",), ("tools", "t")]


@st.composite
def odd_documents(draw: st.DrawFn) -> bytes:
    """The template with a few members made odd, or new odd members added."""
    document = TEMPLATE
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):
            path = draw(st.sampled_from(MEMBER_PATHS))
        else:
            path = (*draw(st.sampled_from(OBJECT_PATHS)), draw(st.sampled_from(ODD_KEYS)))
        document = replaced(document, path, draw(st.sampled_from(ODD_VALUES)))
    return render(document).encode()


class TestCodec:
    @settings(max_examples=200, deadline=None)
    @given(odd_documents())
    def test_adopted_faithfully_or_corrupt(self, data: bytes) -> None:
        """Adopted and written as strict, UTF-8 JSON that decodes the same, or corrupt."""
        try:
            record = decode(data)
        except (CorruptSessionError, UnsupportedVersionError):
            return
        written = encode(record)

        def refuse(constant: str) -> None:
            raise ValueError(f"{constant} is not JSON")

        document = json.loads(written.decode("utf-8"), parse_constant=refuse)
        counts = [document["stats"][key] for key in ("toolCalls", "promptCalls", "errors")]
        assert all(0 <= count <= 2**53 - 1 for count in counts)
        assert decode(written) == record
        assert encode(decode(written)) == written


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
#: What may stand between two tokens in JSON, and what may not (a form feed, a BOM).
SPACES = st.text(st.sampled_from(" \t\n\r"), max_size=3) | st.sampled_from(["\f", "\ufeff"])


@st.composite
def json_texts(draw: st.DrawFn) -> str:
    """A JSON value as text, spaced at random, now and then cut short, given a tail, or with
    a character swapped."""
    value = draw(JSON_VALUES | st.dictionaries(st.text(), JSON_VALUES, max_size=6))
    text = json.dumps(value, indent=draw(st.sampled_from([None, 0, 2])))
    text = draw(SPACES) + text.replace(", ", "," + draw(SPACES)) + draw(SPACES)
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.sampled_from(["", "}", ",", '"', "{", ':"x"}', "} {}"]))
    if text and draw(st.booleans()):  # one character swapped for punctuation
        at = draw(st.integers(0, len(text) - 1))
        text = text[:at] + draw(st.sampled_from(list(',:{}[]"= 1'))) + text[at + 1 :]
    return text


class TestParsingInSteps:
    @settings(max_examples=300, deadline=None)
    @given(json_texts())
    def test_what_it_parses_is_what_json_loads_parses(self, text: str) -> None:
        """Parsed member by member, an object is exactly what json.loads makes of it; anything
        else, or anything malformed, is left to json.loads (None)."""
        try:
            expected: Any = json.loads(text)
        except ValueError:
            expected = None
        found = _loads_in_steps(text)
        if found is not None:
            assert found == expected
            assert list(found) == list(expected)  # the order of the keys too
        elif type(expected) is dict:
            raise AssertionError(f"an object not parsed in steps: {text!r}")

    @pytest.mark.parametrize(
        "text",
        [
            '{"a"=1}',
            '{"a":1,}',
            '{,"a":1}',
            '{"a":1 "b":2}',
            "{1:2}",
            "{'a':1}",
            '{"a":1}}',
            '{"a":1} x',
            '{"a":{"b":1,}}',
            '{"a":{"b" 1}}',
            '\ufeff{"a":1}',
            '{"a":1\f}',
            "[]",
            "",
        ],
    )
    def test_malformed_or_no_object_is_left_to_json_loads(self, text: str) -> None:
        """Punctuation out of place, a non-string key, a tail, or no object: None."""
        assert _loads_in_steps(text) is None


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
