"""A flush that costs what changed: the bytes last written are read back unparsed, and the
lines of unchanged entries are reused, with the very bytes that ``encode`` writes."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiosessionstore import _codec, _file
from aiosessionstore._change import Change, Mode
from aiosessionstore._codec import (
    Encoded,
    decode,
    decode_after,
    encode,
    encode_after,
    encode_parts_after,
)
from aiosessionstore._errors import SessionStoreError
from aiosessionstore._file import FileBackend
from aiosessionstore._session import (
    ClientStats,
    Counts,
    Record,
    Session,
    SessionStats,
    ToolStats,
)

START = datetime(2026, 11, 20, 8, 0, tzinfo=timezone.utc)

#: A file of a newer tool: unknown keys at the top, in stats, and in some entries.
SEEDED = b"""{
  "version": 1,
  "sessionId": "6f1c2a4e-9d3b-4c1a-8e2f-0a1b2c3d4e5f",
  "createdAt": "2026-11-20T08:00:00.000Z",
  "lastActiveAt": "2026-11-20T08:00:00.000Z",
  "stats": {"toolCalls": 3, "promptCalls": 0, "errors": 0, "rateLimits": 0, "new": [1]},
  "tools": {
    "a": {"calls": 1, "errors": 0, "rateLimits": 0, "totalMs": 5, "maxMs": 5, "x": {"y": 1}},
    "b": {"calls": 2, "errors": 0, "rateLimits": 0, "totalMs": 1.5, "maxMs": 1,
          "latency": {"3": 2}}
  },
  "clients": {"c": {"toolCalls": 3, "promptCalls": 0}},
  "later": "kept"
}"""

names = st.sampled_from(["a", "b", "c", "d", "e", "(other)", "\ud800", "é"])
counts = st.one_of(st.integers(0, 5), st.integers(2**53 - 3, 2**60), st.integers(-3, -1))
times = st.one_of(
    st.floats(0, 1e6),
    st.integers(0, 10),
    st.sampled_from([math.nan, math.inf, -1.0, -0.0, 1e308, 0.0005, 2.0004999]),
)
latencies = st.dictionaries(st.integers(0, 159), counts, max_size=3).map(MappingProxyType)
tool_stats = st.builds(ToolStats, counts, counts, counts, times, times, latencies)
client_stats = st.builds(ClientStats, counts, counts)
session_stats = st.builds(SessionStats, counts, counts, counts, counts)


@st.composite
def changes(draw: st.DrawFn) -> tuple[Mode, Counts, int]:
    mode = draw(st.sampled_from([Mode.MERGE] * 8 + [Mode.RESET, Mode.NEW]))
    pending = Counts(
        draw(session_stats),
        MappingProxyType(draw(st.dictionaries(names, tool_stats, max_size=3))),
        MappingProxyType(draw(st.dictionaries(names, tool_stats, max_size=2))),
        MappingProxyType(draw(st.dictionaries(names, client_stats, max_size=2))),
    )
    return mode, pending, draw(st.integers(0, 10**9))


def change(mode: Mode, pending: Counts, milliseconds: int, known: Record) -> Change:
    active_at = START + timedelta(milliseconds=milliseconds)
    return Change(mode, pending, active_at, known, True, max_tools=4)


class TestEncodeAfter:
    @settings(max_examples=150, deadline=None)
    @given(
        st.sampled_from([1, 2, 64]),  # lines per joined block (64 ships)
        st.booleans(),
        st.booleans(),
        st.lists(changes(), min_size=1, max_size=8),
    )
    def test_is_encode_and_foresees_decode(
        self, block: int, seeded: bool, hinted: bool, steps: list[tuple[Mode, Counts, int]]
    ) -> None:
        """Along any run of changes, the reusing encoder writes encode's very bytes, and the
        record it keeps is the one decode reads back from them; told the names each merge
        touched, or comparing every entry."""
        with patch.object(_codec, "_BLOCK", block):
            record = decode(SEEDED) if seeded else Record(Session.new(START))
            previous: Encoded | None = Encoded.decoded(SEEDED, record) if seeded else None
            for mode, pending, milliseconds in steps:
                base = record if previous is None else previous.record
                made = change(mode, pending, milliseconds, base)
                record = made.apply(base)
                touched = made.touched() if hinted and previous is not None else None
                parts, encoded = encode_parts_after(record, previous, touched)
                data = b"".join(parts)
                assert data == encode(record)
                if encoded is not None:
                    assert encoded.data == data
                    assert encoded.matches(data)
                    middle = len(data) // 2
                    other = data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1 :]
                    assert not encoded.matches(other)
                    assert not encoded.matches(data + b" ")
                    assert encoded.record == decode(data)
                    assert encode(encoded.record) == encode(decode(data))
                previous = encoded

    @pytest.mark.parametrize("hinted", [False, True])
    def test_reuses_the_line_of_an_entry_left_alone(self, hinted: bool) -> None:
        """An entry that is the same object as last time is not encoded again."""
        tools = MappingProxyType({"a": ToolStats(1, 0, 0, 1.0, 1.0), "b": ToolStats(2)})
        record = Record(Session.new(START)).with_session(tools=tools)
        _, previous = encode_after(record, None)
        assert previous is not None
        lines = previous.sections["tools"].lines
        lines[:] = [line.replace(b'"calls": 1', b'"calls": 7') for line in lines]  # marked
        more = Counts(tools=MappingProxyType({"b": ToolStats(1)}))
        merge = change(Mode.MERGE, more, 0, previous.record)
        after = merge.apply(previous.record)
        parts, _ = encode_parts_after(after, previous, merge.touched() if hinted else None)
        assert b'"calls": 7' in b"".join(parts)  # the reused line, as marked

    def test_builds_on_an_encoding_once(self) -> None:
        """An encoding that one encode built on is not built on again: the second gets
        nothing from it, and still writes encode's bytes."""
        tools = MappingProxyType({"a": ToolStats(1), "b": ToolStats(2)})
        record = Record(Session.new(START)).with_session(tools=tools)
        _, previous = encode_after(record, None)
        assert previous is not None
        for calls in (5, 6):
            more = Counts(tools=MappingProxyType({"b": ToolStats(calls)}))
            merge = change(Mode.MERGE, more, 0, previous.record)
            after = merge.apply(previous.record)
            data, encoded = encode_after(after, previous, merge.touched())
            assert data == encode(after)
            assert encoded is not None
            assert encoded.record == decode(data)

    @pytest.mark.parametrize(
        "moment",
        [
            START,
            START + timedelta(microseconds=1500),  # finer than a millisecond
            START.astimezone(timezone(timedelta(hours=-3))),  # another zone
            datetime(9999, 12, 31, 23, 59, 59, 999999, timezone.utc),
        ],
    )
    def test_foresees_the_times_as_decode_reads_them(self, moment: datetime) -> None:
        """The record kept holds each time as decode() reads back what encode() wrote."""
        session = Session.new(START)
        record = Record(session).with_session(created_at=moment, last_active_at=moment)
        data, encoded = encode_after(record, None)
        assert encoded is not None
        assert encoded.record == decode(data)
        assert encoded.record.session.created_at.tzinfo is timezone.utc


@st.composite
def rivals(draw: st.DrawFn, ours: Record) -> Record:
    """What another process may have stored over ``ours``: entries changed, added, removed
    or moved, and keys we do not know (at the top, in stats, in an entry)."""
    session = ours.session
    fields: dict[str, Any] = {"stats": draw(session_stats)}
    for section, stats in (
        ("tools", tool_stats),
        ("prompts", tool_stats),
        ("clients", client_stats),
    ):
        entries = dict(getattr(session, section))
        for name in draw(st.sets(names, max_size=2)):
            entries.pop(name, None)
        entries.update(draw(st.dictionaries(names, stats, max_size=3)))
        if draw(st.booleans()):
            entries = dict(reversed(entries.items()))
        fields[section] = MappingProxyType(entries)
    rival = ours.with_session(**fields)
    extra: dict[str, Any] = draw(
        st.sampled_from([{}, {}, {"later": "kept"}, {"tools": {}}, {"x": {"y": [1]}}])
    )
    stats_extra: dict[str, Any] = draw(st.sampled_from([{}, {}, {"new": [1]}]))
    entries_extra: dict[str, Any] = {}
    if fields["tools"] and draw(st.booleans()):
        entries_extra["tools"] = {draw(st.sampled_from(list(fields["tools"]))): {"new": 1}}
    return dataclasses.replace(
        rival,
        extra=MappingProxyType(extra),
        stats_extra=MappingProxyType(stats_extra),
        entries_extra=MappingProxyType(entries_extra),
    )


#: Byte-level damage: a character put in, taken out, or a line given twice.
damages = st.tuples(
    st.sampled_from(["none", "none", "insert", "delete", "twice"]),
    st.floats(0, 1),
    st.sampled_from([b" ", b"\n", b",", b"}", b"{", b'"', b"1", b"7", b"\n    }", b",\n    "]),
)


def damaged(data: bytes, damage: tuple[str, float, bytes]) -> bytes:
    kind, where, text = damage
    at = int(where * len(data))
    if kind == "insert":
        return data[:at] + text + data[at:]
    if kind == "delete":
        return data[:at] + data[at + len(text) :]
    if kind == "twice":  # the line at ``at`` given twice, as a duplicate entry would be
        start = data.rfind(b"\n", 0, at) + 1
        end = data.find(b"\n", at)
        end = len(data) if end < 0 else end + 1
        return data[:end] + data[start:end] + data[end:]
    return data


def outcome(read: Callable[[], Any]) -> Any:
    """What ``read`` returns, or the type and message of the SessionStoreError it raises."""
    try:
        return read()
    except SessionStoreError as exc:
        return type(exc), str(exc)


class TestDecodeAfter:
    @settings(max_examples=300, deadline=None)
    @given(
        st.sampled_from([1, 2, 64]),  # lines per joined block (64 ships)
        st.data(),
        damages,
    )
    def test_is_decode(
        self, block: int, draw: st.DataObject, damage: tuple[str, float, bytes]
    ) -> None:
        """Over what another process wrote after us, damaged or not, decode_after returns
        decode's record, in decode's order, or raises decode's error; and the next encode
        built on what it returns writes encode's very bytes."""
        with patch.object(_codec, "_BLOCK", block):
            ours = Record(Session.new(START)).with_session(
                **{
                    section: MappingProxyType(draw.draw(st.dictionaries(names, stats, max_size=5)))
                    for section, stats in (
                        ("tools", tool_stats),
                        ("prompts", tool_stats),
                        ("clients", client_stats),
                    )
                }
            )
            newer_keys: bool = draw.draw(st.booleans())  # no lines are kept of "tools"
            if ours.session.tools and newer_keys:
                newer = {draw.draw(st.sampled_from(list(ours.session.tools))): {"new": 1}}
                ours = dataclasses.replace(ours, entries_extra=MappingProxyType({"tools": newer}))
            _, previous = encode_parts_after(ours, None)
            assert previous is not None
            data = damaged(encode(draw.draw(rivals(previous.record))), damage)
            expected = outcome(lambda: decode(data))
            read = outcome(lambda: decode_after(data, previous))
            if not isinstance(expected, Record):
                assert read == expected  # the same error, with the same message
                return
            assert read.record == expected
            assert encode(read.record) == encode(expected)  # the same order, too
            assert read.matches(data)
            mode, pending, milliseconds = draw.draw(changes())
            made = change(mode, pending, milliseconds, read.record)
            after = made.apply(read.record)
            parts, encoded = encode_parts_after(after, read, made.touched())
            assert b"".join(parts) == encode(after)
            if encoded is not None:
                assert encoded.record == decode(b"".join(parts))

    def test_a_time_finer_than_a_microsecond_is_read_as_written_back(self) -> None:
        """A time of more decimals than encode writes (1.23456) decodes as it is written
        back (1.235): the record an encode keeps is the one decode reads of its bytes."""
        data = encode(Record(Session.new(START)).with_session(tools={"a": ToolStats(1)}))
        data = data.replace(b'"totalMs": 0.0', b'"totalMs": 1.23456')
        record = decode(data)
        assert record.session.tools["a"].total_ms == 1.235
        touched = record.with_session(stats=SessionStats(tool_calls=2))
        parts, encoded = encode_parts_after(touched, Encoded.decoded(data, record))
        assert encoded is not None
        assert encoded.record == decode(b"".join(parts))

    def test_parses_only_what_another_process_changed(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A file another of our processes rewrote, one entry changed, is read without a
        whole parse: one entry parsed, the rest taken as this process wrote them."""
        tools = {f"t{index}": ToolStats(index) for index in range(300)}
        ours = Record(Session.new(START)).with_session(tools=MappingProxyType(tools))
        _, previous = encode_parts_after(ours, None)
        assert previous is not None
        data = encode(previous.record.with_session(tools={**tools, "t150": ToolStats(7)}))
        parsed: list[bytes] = []
        real = _codec._members_of

        def counted(text: bytes) -> dict[str, Any] | None:
            parsed.append(text)
            return real(text)

        monkeypatch.setattr(_codec, "_members_of", counted)
        monkeypatch.setattr(_codec, "decode", None)  # a whole parse would fail
        read = decode_after(data, previous)
        assert read.record.session.tools["t150"] == ToolStats(7)
        assert len(parsed) == 3  # the head, the entry, the tail
        assert read.record.session.tools["t1"] is previous.record.session.tools["t1"]

    def test_another_layout_is_parsed_whole(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A file in another layout (compact JSON) is left to decode."""
        ours = Record(Session.new(START)).with_session(tools={"t": ToolStats(1)})
        _, previous = encode_parts_after(ours, None)
        assert previous is not None
        data = json.dumps(json.loads(encode(previous.record)), separators=(",", ":")).encode()
        decodes = counting_decodes(monkeypatch, _codec)
        assert decode_after(data, previous).record == decode(data)
        assert decodes == [data]


def counting_decodes(monkeypatch: pytest.MonkeyPatch, module: Any = _file) -> list[bytes]:
    """Every decode a transaction (or ``module``) makes, by the bytes it parsed."""
    seen: list[bytes] = []
    real = decode

    def counted(data: bytes) -> Record:
        seen.append(data)
        return real(data)

    monkeypatch.setattr(module, "decode", counted)
    return seen


def merge(backend: FileBackend, known: Record, tool: str = "t", calls: int = 1) -> Record:
    pending = Counts(
        SessionStats(tool_calls=calls), MappingProxyType({tool: ToolStats(calls, 0, 0, 0.5)})
    )
    return backend.commit(Change(Mode.MERGE, pending, START, known, True))


@pytest.fixture
def opened(tmp_path: Path) -> tuple[FileBackend, Record]:
    backend = FileBackend(tmp_path / "session.json")
    known = Record(Session.new(START))
    return backend, backend.open(Change(Mode.MERGE, Counts(), START, known, False))


def on_disk(backend: FileBackend) -> Record:
    return decode(backend.path.read_bytes())


class TestFileBackend:
    def test_its_own_bytes_are_not_parsed_again(
        self, opened: tuple[FileBackend, Record], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A flush over the bytes this backend wrote last reads them without decoding them."""
        backend, known = opened
        decodes = counting_decodes(monkeypatch)
        for _ in range(3):
            known = merge(backend, known)
        assert decodes == []
        assert on_disk(backend).session.tools["t"].calls == 3

    def test_another_writers_bytes_are_parsed(self, opened: tuple[FileBackend, Record]) -> None:
        """After another backend on the same file wrote, the counts of both add up."""
        backend, known = opened
        other = FileBackend(backend.path)
        known = merge(backend, known)
        merge(other, on_disk(other), calls=10)
        merge(backend, known)
        assert on_disk(backend).session.tools["t"].calls == 12

    def test_another_writers_file_is_read_for_what_it_changed(
        self, opened: tuple[FileBackend, Record], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Over a file another backend rewrote, a flush parses no whole file: it takes the
        entries it wrote as they were, and the next flush reuses what it wrote."""
        backend, known = opened
        other = FileBackend(backend.path)
        for tool in ("a", "b", "c"):
            known = merge(backend, known, tool=tool)
        merge(other, on_disk(other), tool="b", calls=10)
        decodes = counting_decodes(monkeypatch, _codec)
        known = merge(backend, known, tool="c")
        merge(backend, known, tool="a")
        assert decodes == []
        tools = on_disk(backend).session.tools
        assert [(name, tools[name].calls) for name in tools] == [("a", 2), ("b", 11), ("c", 2)]
        assert backend.path.read_bytes() == encode(on_disk(backend))

    def test_a_same_size_file_with_the_same_times_is_parsed(
        self, opened: tuple[FileBackend, Record]
    ) -> None:
        """A file replaced by one of the same size and modification time is still read."""
        backend, known = opened
        known = merge(backend, known, calls=1)
        before = os.stat(backend.path)
        data = backend.path.read_bytes()
        assert data.count(b'"calls": 1,') == 1
        backend.path.write_bytes(data.replace(b'"calls": 1,', b'"calls": 5,'))
        os.utime(backend.path, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert os.stat(backend.path).st_size == before.st_size
        merge(backend, known)
        assert on_disk(backend).session.tools["t"].calls == 6

    def test_a_corrupt_file_set_aside_is_not_mistaken_for_ours(
        self, opened: tuple[FileBackend, Record]
    ) -> None:
        """Over a corrupt file (set aside), the flush builds on what the store knew."""
        backend, known = opened
        known = merge(backend, known, calls=2)
        backend.path.write_bytes(b"{not json")
        known = merge(backend, known, calls=1)
        assert len(list(backend.path.parent.glob("session.json.corrupt-*"))) == 1
        merge(backend, known, calls=1)
        assert on_disk(backend).session.tools["t"].calls == 4

    def test_a_deleted_session_starts_anew(self, opened: tuple[FileBackend, Record]) -> None:
        """After a delete, even by another backend, the next flush starts a new session."""
        backend, known = opened
        known = merge(backend, known, calls=2)
        FileBackend(backend.path).remove()
        merge(backend, known, calls=1)
        assert on_disk(backend).session.session_id != known.session.session_id
        assert on_disk(backend).session.tools["t"].calls == 1

    def test_a_reset_then_a_merge_writes_what_encode_writes(
        self, opened: tuple[FileBackend, Record]
    ) -> None:
        """Through a reset, each file holds exactly encode's bytes of what was stored."""
        backend, known = opened
        known = merge(backend, known, tool="a")
        known = backend.commit(Change(Mode.RESET, Counts(), START, known, True))
        assert backend.path.read_bytes() == encode(known)
        known = merge(backend, known, tool="b")
        assert backend.path.read_bytes() == encode(known)
        assert list(on_disk(backend).session.tools) == ["b"]


@pytest.mark.parametrize("block", [2, 64])
def test_flushes_over_many_names_write_what_encode_writes(
    opened: tuple[FileBackend, Record], block: int
) -> None:
    """Merges that touch names in many blocks, and add names, each write encode's bytes of
    what they stored, and keep the record that decode reads back."""
    backend, known = opened
    with patch.object(_codec, "_BLOCK", block):
        for step in range(16):
            tools = {
                f"t{(step * 37 + k * 53) % 150}": ToolStats(1, 0, 0, 0.25 * k) for k in range(4)
            }
            pending = Counts(SessionStats(tool_calls=4), MappingProxyType(tools))
            known = backend.commit(Change(Mode.MERGE, pending, START, known, True))
            assert backend.path.read_bytes() == encode(known)
            kept = backend._written.last
            assert kept is not None
            assert kept.record == on_disk(backend)
    assert on_disk(backend).session.stats.tool_calls == 64


def test_nothing_else_is_kept(opened: tuple[FileBackend, Record]) -> None:
    """What a backend keeps is the last file's bytes and record, and no more."""
    backend, known = opened
    merge(backend, known)
    kept: Any = backend._written.last
    assert kept is not None
    assert kept.data == backend.path.read_bytes()
    assert kept.record == on_disk(backend)


def test_a_session_replaced_is_dataclasses_replace() -> None:
    """The flush's own replace gives what dataclasses.replace gives, and refuses what it
    refuses."""
    session = Session.new(START)
    changes: dict[str, Any] = {
        "last_active_at": START + timedelta(seconds=1),
        "stats": SessionStats(tool_calls=3),
        "tools": MappingProxyType({"t": ToolStats(1)}),
    }
    assert session.replaced(changes) == dataclasses.replace(session, **changes)
    with pytest.raises(TypeError):
        session.replaced({"no_such_field": 1})


@pytest.mark.parametrize("iov_max", [2, 1024])
def test_parts_are_written_whole_through_short_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, iov_max: int
) -> None:
    """A file written from its parts holds them all, in order, however few bytes each
    writev takes, and however many parts one writev may take."""
    parts = [b"{", b"", b'\n  "a": 1', b",\n", b'  "b": ' + b"2" * 100, b"\n}"]
    real = os.writev

    def short(fd: int, buffers: Any) -> int:  # a few bytes at a time, as writev may
        return real(fd, [bytes(buffers[0])[:5]]) if buffers else 0

    monkeypatch.setattr(_file, "_IOV_MAX", iov_max)
    monkeypatch.setattr(os, "writev", short)
    _file.write_new(tmp_path / "short", parts)
    monkeypatch.setattr(os, "writev", real)
    _file.write_new(tmp_path / "whole", parts)
    assert (tmp_path / "short").read_bytes() == b"".join(parts)
    assert (tmp_path / "whole").read_bytes() == b"".join(parts)


def test_a_file_another_process_wrote_is_read_and_written_in_steps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Parsing a file at the cap pauses after each large section, checking and encoding it
    every STEP entries, so that an event loop on another thread runs meanwhile (it waited
    6-10 ms per flush at 744 KB)."""
    entry = {"calls": 1, "errors": 0, "rateLimits": 0, "totalMs": 1.5, "maxMs": 1.5}
    document = {
        **json.loads(SEEDED),
        "tools": {f"t{index}": entry for index in range(1000)},
        "prompts": {f"p{index}": entry for index in range(1000)},
    }
    data = json.dumps(document, indent=2).encode()
    pauses: list[int] = []
    monkeypatch.setattr(_codec, "pause", lambda: pauses.append(1))
    record = decode(data)
    read = len(pauses)
    assert read >= 2000 // _codec.STEP + 2  # after each large section parsed, as checked
    encode(record)
    assert len(pauses) - read >= 2000 // _codec.STEP
