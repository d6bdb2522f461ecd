"""The session file: the TypeScript tool's JSON, both ways, and what happens to bad files."""

from __future__ import annotations

import codecs
import json
import math
import re
import shutil
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiofiles
import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiosessionstore import (
    AsyncSessionStore,
    ClientStats,
    Session,
    SessionStats,
    ToolStats,
    UnsupportedVersionError,
)
from aiosessionstore._cli import EXIT_CODES, main
from aiosessionstore._codec import decode, encode
from aiosessionstore._errors import CorruptSessionError
from aiosessionstore._file import MAX_FILE_SIZE
from aiosessionstore._latency import BUCKETS
from aiosessionstore._session import Record, format_timestamp, parse_timestamp

from .conftest import read_json

SEED_FILE = """{
  "version": 1,
  "sessionId": "6f1c2a4e-9d3b-4c1a-8e2f-0a1b2c3d4e5f",
  "createdAt": "2026-11-20T08:00:00.000Z",
  "lastActiveAt": "2026-11-25T15:06:07.123Z",
  "stats": {
    "toolCalls": 42,
    "promptCalls": 7,
    "errors": 3,
    "rateLimits": 1
  }
}"""


def raw_document(**fields: str) -> bytes:
    """The seed file with some fields replaced by raw JSON text, which json.dumps cannot write."""
    members = {
        "version": "1",
        "sessionId": '"6f1c2a4e-9d3b-4c1a-8e2f-0a1b2c3d4e5f"',
        "createdAt": '"2026-11-20T08:00:00.000Z"',
        "lastActiveAt": '"2026-11-25T15:06:07.123Z"',
        "stats": '{"toolCalls": 42, "promptCalls": 7, "errors": 3, "rateLimits": 1}',
    } | fields
    return ("{" + ", ".join(f'"{key}": {value}' for key, value in members.items()) + "}").encode()


def raw_tool(**fields: str) -> str:
    """A tools object holding one tool, "t", with some fields replaced by raw JSON text."""
    members = {"calls": "1", "errors": "0", "rateLimits": "0", "totalMs": "1.5", "maxMs": "1.5"}
    members |= fields
    return '{"t": {' + ", ".join(f'"{key}": {value}' for key, value in members.items()) + "}}"


def nested(depth: int) -> str:
    """A JSON value nested ``depth`` arrays deep."""
    return "[" * depth + "]" * depth


#: Valid JSON (every one of them) that is no valid session: decode must call each corrupt.
HOSTILE = {
    "counter of 5,000 digits": raw_document(
        stats='{"toolCalls": ' + "9" * 5000 + ', "promptCalls": 0, "errors": 0, "rateLimits": 0}'
    ),
    "version of 5,000 digits": raw_document(version="9" * 5000),
    "latency bucket of 5,000 digits": raw_document(
        tools=raw_tool(latency='{"' + "9" * 5000 + '": 1}')
    ),
    "extra nested 200,000 deep": raw_document(x=nested(200_000)),
    "extra nested 1,000 deep": raw_document(x=nested(1_000)),
    "extra nested 65 deep": raw_document(x=nested(64)),
    "extra object nested 1,000 deep": raw_document(x='{"a": ' * 1000 + "1" + "}" * 1000),
    "createdAt before year 1 in UTC": raw_document(createdAt='"0001-01-01T00:00:00+01:00"'),
    "lastActiveAt after year 9999 in UTC": raw_document(
        lastActiveAt='"9999-12-31T23:30:00.000-01:00"'
    ),
    "sessionId a lone surrogate": raw_document(sessionId='"\\ud800"'),
    "sessionId ending in a lone surrogate": raw_document(sessionId='"abc\\udfff"'),
    # Invalid UTF-8 that json.loads(bytes) lets through: it decodes with "surrogatepass".
    "sessionId with a UTF-8-encoded surrogate": raw_document(sessionId='"a?"').replace(
        b"?", b"\xed\xa0\x80"
    ),
    "extra key with a UTF-8-encoded surrogate": raw_document(**{"?": "1"}).replace(
        b"?", b"\xed\xa0\x80"
    ),
    "totalMs of 400 digits": raw_document(tools=raw_tool(totalMs="9" * 400)),
    "maxMs of 5,000 digits": raw_document(tools=raw_tool(maxMs="9" * 5000)),
}


MAX_SAFE_INTEGER = 2**53 - 1  # Number.MAX_SAFE_INTEGER


def raw_stats(tool_calls: str = "0", more: str = "") -> str:
    """A stats object with toolCalls replaced by raw JSON text, and raw members appended."""
    return f'{{"toolCalls": {tool_calls}, "promptCalls": 0, "errors": 0, "rateLimits": 0{more}}}'


#: What JSON.parse rejects, or reads as something else than we would keep: corrupt, each.
NOT_STRICT = {
    "NaN in an unknown key": raw_document(x="NaN"),
    "Infinity nested in an unknown key": raw_document(x='{"a": [Infinity]}'),
    "-Infinity in an unknown key inside stats": raw_document(
        stats=raw_stats(more=', "x": -Infinity')
    ),
    "NaN as totalMs": raw_document(tools=raw_tool(totalMs="NaN")),
    "1e400 in an unknown key": raw_document(x="1e400"),
    "-1e400 nested in an unknown key": raw_document(x="[[-1e400]]"),
    "an integer of 400 digits in an unknown key": raw_document(x="9" * 400),
    "toolCalls above MAX_SAFE_INTEGER": raw_document(stats=raw_stats(str(2**53))),
    "a tool's calls above MAX_SAFE_INTEGER": raw_document(tools=raw_tool(calls=str(2**53))),
    "UTF-16": SEED_FILE.encode("utf-16"),
    "UTF-32": SEED_FILE.encode("utf-32"),
}

#: Edge cases that are a valid session: adopted, and written back as strict JSON.
ADOPTED = {
    "MAX_SAFE_INTEGER counters": raw_document(
        stats=raw_stats(str(MAX_SAFE_INTEGER)), tools=raw_tool(calls=str(MAX_SAFE_INTEGER))
    ),
    "a lone surrogate as a tool name": raw_document(tools=raw_tool().replace('"t"', '"\\udfff"')),
    "lone surrogates in an unknown key and value": raw_document(
        **{"\\ud800x": '["\\udfff", {"\\udbff": "\\ud800\\ud800"}]'}
    ),
    "a surrogate pair as two escapes": raw_document(x='"\\ud83d\\ude00"'),
    "a UTF-8 byte order mark": codecs.BOM_UTF8 + SEED_FILE.encode(),
    "an integer of 300 digits in an unknown key": raw_document(x="9" * 300),
    "the largest double as times": raw_document(
        tools=raw_tool(totalMs="1.7976931348623157e308", maxMs="1e308")
    ),
    "an unknown value 64 levels deep, counting the document": raw_document(x=nested(63)),
    "-0 as a counter": raw_document(stats=raw_stats("-0")),
}


def strict_json(data: bytes) -> Any:
    """The file as JSON.parse reads it: UTF-8 with no BOM, and no NaN or Infinity."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    assert not data.startswith(codecs.BOM_UTF8)
    return json.loads(data.decode("utf-8"), parse_constant=refuse)


def valid_document() -> dict[str, Any]:
    document = json.loads(SEED_FILE)
    assert isinstance(document, dict)
    return document


class TestTimestamps:
    def test_formatted_as_javascript_to_iso_string(self) -> None:
        """Milliseconds and a Z, exactly as Date.prototype.toISOString() writes them."""
        moment = datetime(2026, 11, 25, 15, 6, 7, 123456, tzinfo=timezone.utc)
        assert format_timestamp(moment) == "2026-11-25T15:06:07.123Z"

    def test_offsets_are_read_and_converted_to_utc(self) -> None:
        """Another tool's +01:00 timestamp is the same instant in UTC."""
        moment = parse_timestamp("2026-11-25T16:06:07.123+01:00")
        assert moment == datetime(2026, 11, 25, 15, 6, 7, 123000, tzinfo=timezone.utc)

    def test_a_timestamp_without_a_zone_is_refused(self) -> None:
        """A naive time could be any of 24 instants."""
        with pytest.raises(ValueError, match="time zone"):
            parse_timestamp("2026-11-25T15:06:07")

    @pytest.mark.parametrize(
        ("text", "iso_string"),
        [
            ("2026-11-20T08:00:00.000Z", "2026-11-20T08:00:00.000Z"),
            ("2026-11-20T08:00Z", "2026-11-20T08:00:00.000Z"),
            ("2026-11-20T08:00:00Z", "2026-11-20T08:00:00.000Z"),
            ("2026-11-20T08:00:00.5-05:30", "2026-11-20T13:30:00.500Z"),
            ("2026-11-20T08:00:00.1239999Z", "2026-11-20T08:00:00.123Z"),
            ("0001-01-01T00:59:00.000+00:59", "0001-01-01T00:00:00.000Z"),
            ("9999-12-31T23:59:59.999Z", "9999-12-31T23:59:59.999Z"),
        ],
    )
    def test_javascripts_own_format_is_read_as_date_reads_it(
        self, text: str, iso_string: str
    ) -> None:
        """ECMAScript's Date Time String Format: the instant, to the millisecond, Date finds."""
        assert format_timestamp(parse_timestamp(text)) == iso_string

    @pytest.mark.parametrize(
        "text",
        [
            "2026-11-20 08:00:00Z",  # RFC 3339 and V8 allow these three; ECMAScript does not
            "2026-11-20t08:00:00z",
            "2026-11-20T08:00:00+0100",
            "20261120T080000Z",  # Python 3.11's fromisoformat allows these five; Date does not
            "2026-W47-5T08:00Z",
            "2026-11-20T08Z",
            "2026-11-20T08:00:00,5Z",
            "2026-11-20T08:00:00+01:00:30",
            "2026-11-20T08:00:00.Z",
            "2026-11-20T24:00:00Z",
            "2026-11-20T08:00:60Z",
            "2026-02-30T08:00:00Z",
            "2026-11-20T08:00:00+24:00",
            "0000-06-01T00:00:00Z",
            "+002026-11-20T08:00:00Z",
            "\u0662\u0660\u0662\u0666-11-20T08:00:00Z",  # Arabic-Indic digits
            "2026-11-20",
            "2026-11-20T08:00:00Z\n",
        ],
    )
    def test_other_forms_are_refused(self, text: str) -> None:
        """Not JavaScript's format, or a date it does not hold: refused on every Python alike."""
        with pytest.raises(ValueError, match="time zone"):
            parse_timestamp(text)

    @pytest.mark.parametrize("text", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:30:00.000-01:00"])
    def test_an_offset_past_years_1_to_9999_is_refused(self, text: str) -> None:
        """A moment before year 1 or after 9999 in UTC, which a datetime cannot hold."""
        with pytest.raises(ValueError, match="years 1 to 9999"):
            parse_timestamp(text)


class TestCodec:
    def test_reads_what_the_seed_writes(self) -> None:
        """A file written by the TypeScript tool loads with every field."""
        session = decode(SEED_FILE.encode()).session
        assert session == Session(
            version=1,
            session_id="6f1c2a4e-9d3b-4c1a-8e2f-0a1b2c3d4e5f",
            created_at=datetime(2026, 11, 20, 8, 0, tzinfo=timezone.utc),
            last_active_at=datetime(2026, 11, 25, 15, 6, 7, 123000, tzinfo=timezone.utc),
            stats=SessionStats(42, 7, 3, 1),
        )

    def test_writes_byte_for_byte_what_the_seed_writes(self) -> None:
        """JSON.stringify(session, null, 2): same keys, order, indent and timestamps."""
        assert encode(decode(SEED_FILE.encode())).decode() == SEED_FILE

    def test_unknown_top_level_keys_are_kept(self) -> None:
        """Keys we do not know round-trip unchanged, after the ones we do."""
        document = valid_document() | {"plugin": {"theme": "dark"}, "note": "ü"}
        record = decode(json.dumps(document).encode())
        assert json.loads(encode(record)) == document

    @pytest.mark.parametrize(
        ("change", "complaint"),
        [
            ({"version": "1"}, "version should be an integer"),
            ({"version": 0}, "not a valid version"),
            ({"sessionId": ""}, "sessionId is empty"),
            ({"sessionId": 7}, "sessionId should be a string"),
            ({"createdAt": "yesterday"}, "createdAt: timestamp 'yesterday' is not a valid"),
            ({"createdAt": "0001-01-01T00:00+01:00"}, "createdAt: .* outside years 1 to 9999"),
            ({"lastActiveAt": None}, "lastActiveAt should be a string"),
            ({"stats": []}, "stats should be an object"),
            ({"stats": {"toolCalls": 1, "promptCalls": 0, "errors": 0}}, "rateLimits is missing"),
            ({"stats": {"toolCalls": -1, "promptCalls": 0, "errors": 0, "rateLimits": 0}},
             "negative"),
            ({"stats": {"toolCalls": 1.5, "promptCalls": 0, "errors": 0, "rateLimits": 0}},
             "should be an integer"),
            ({"stats": {"toolCalls": True, "promptCalls": 0, "errors": 0, "rateLimits": 0}},
             "should be an integer"),
        ],
    )  # fmt: skip
    def test_bad_fields_are_named(self, change: dict[str, Any], complaint: str) -> None:
        """Each kind of damage gets a message that says what is wrong."""
        with pytest.raises(CorruptSessionError, match=complaint):
            decode(json.dumps(valid_document() | change).encode())

    @pytest.mark.parametrize("data", [b"", b"{", b"[]", b"\xff\xfe", b"null"])
    def test_non_objects_are_corrupt(self, data: bytes) -> None:
        """Empty, truncated, non-UTF-8 or non-object files are corrupt, not crashes."""
        with pytest.raises(CorruptSessionError):
            decode(data)

    def test_a_newer_version_is_unsupported(self) -> None:
        """A file from the future is not ours to judge or rewrite."""
        with pytest.raises(UnsupportedVersionError, match="upgrade aiosessionstore"):
            decode(json.dumps(valid_document() | {"version": 2}).encode())


class TestHostileFiles:
    @pytest.mark.parametrize("data", HOSTILE.values(), ids=HOSTILE.keys())
    def test_decode_calls_it_corrupt(self, data: bytes) -> None:
        """No ValueError, RecursionError, OverflowError or UnicodeError: CorruptSessionError."""
        with pytest.raises(CorruptSessionError):
            decode(data)

    @pytest.mark.parametrize(
        "data",
        [
            raw_document(tools=raw_tool(calls="-1").replace('"t"', '"\\udcff"')),
            raw_document(sessionId='"\\ud800"'),
            raw_document(**{"\\udfff": "1e400"}),
            raw_document(createdAt='"\\ud800"'),
        ],
        ids=["tool name", "sessionId", "unknown key", "timestamp"],
    )
    def test_what_it_says_is_valid_unicode(self, data: bytes) -> None:
        """The message names a lone surrogate by its escape: logs and stderr must encode it."""
        with pytest.raises(CorruptSessionError) as caught:
            decode(data)
        assert "\\ud" in str(caught.value)
        str(caught.value).encode()

    def test_a_lone_surrogate_in_an_unknown_key_is_adopted_and_written(self) -> None:
        """JSON.stringify writes a lone surrogate as an escape; it round-trips, and encodes."""
        record = decode(raw_document(**{"\\ud800": '"\\udfff"'}))
        assert dict(record.extra) == {"\ud800": "\udfff"}
        assert decode(encode(record)) == record


class TestStrictOutput:
    @pytest.mark.parametrize("data", NOT_STRICT.values(), ids=NOT_STRICT.keys())
    def test_what_json_parse_would_refuse_or_change_is_corrupt(self, data: bytes) -> None:
        """NaN, Infinity, numbers past a double's range or a safe integer's, and non-UTF-8."""
        with pytest.raises(CorruptSessionError):
            decode(data)

    @pytest.mark.parametrize("data", ADOPTED.values(), ids=ADOPTED.keys())
    def test_what_is_adopted_is_written_as_strict_json(self, data: bytes) -> None:
        """Strict JSON in valid UTF-8, which decodes back to the same record."""
        record = decode(data)
        written = encode(record)
        strict_json(written)
        assert decode(written) == record

    def test_a_duplicate_key_keeps_its_last_value(self) -> None:
        """As JSON.parse does: the last of two members with one name wins."""
        data = raw_document(x="1", stats=raw_stats("5")).replace(b'"x": 1', b'"x": 1, "x": 2')
        record = decode(data.replace(b'"stats"', b'"stats": 7, "stats"'))
        assert (record.extra["x"], record.session.stats.tool_calls) == (2, 5)


#: A file of a newer writer that added keys inside stats and inside a tool's entry.
WITH_NESTED_KEYS = raw_document(
    stats=raw_stats("5", ', "resourceCalls": 9, "by": {"day": [1, 2]}'),
    tools=raw_tool(minMs='0.25, "tags": ["io"]'),
    plugin='{"theme": "dark"}',
)


class TestUnknownKeysInside:
    def test_keys_inside_stats_and_a_tool_are_kept(self) -> None:
        """Like top-level ones, they are written back as found, after the keys we know."""
        document = strict_json(encode(decode(WITH_NESTED_KEYS)))
        assert document["stats"] == {
            "toolCalls": 5, "promptCalls": 0, "errors": 0, "rateLimits": 0,
            "resourceCalls": 9, "by": {"day": [1, 2]},
        }  # fmt: skip
        assert document["tools"]["t"] == {
            "calls": 1, "errors": 0, "rateLimits": 0, "totalMs": 1.5, "maxMs": 1.5,
            "minMs": 0.25, "tags": ["io"],
        }  # fmt: skip
        assert list(document) == [*valid_document(), "tools", "plugin"]

    @pytest.mark.parametrize(
        "data",
        [
            raw_document(stats=raw_stats(more=', "x": 1e400')),
            raw_document(tools=raw_tool(x="[" + "9" * 400 + "]")),
            raw_document(stats=raw_stats(more=f', "x": {nested(63)}')),
            raw_document(tools=raw_tool(x=nested(62))),
        ],
        ids=["1e400 in stats", "400 digits in a tool", "65 deep in stats", "65 deep in a tool"],
    )
    def test_they_are_held_to_the_rules_of_top_level_ones(self, data: bytes) -> None:
        """No number JavaScript reads as Infinity, no nesting past 64 levels of the document."""
        with pytest.raises(CorruptSessionError):
            decode(data)

    def test_64_levels_deep_in_a_tool_are_kept(self) -> None:
        """The document, tools, the tool and 61 arrays: 64 levels."""
        record = decode(raw_document(tools=raw_tool(x=nested(61).replace("[]", "[1]"))))
        assert decode(encode(record)) == record


class TestSurrogates:
    def test_a_pair_given_as_two_code_points_reads_back_as_one_character(self) -> None:
        """JSON, as a JS string, holds UTF-16: the pair is the character, and comes back so."""
        session = Session.new(datetime(2026, 1, 1, tzinfo=timezone.utc))
        record = Record(replace(session, tools={"\ud83d\ude00": ToolStats(1)}))
        assert b'"\\ud83d\\ude00"' in encode(record)
        assert list(decode(encode(record)).session.tools) == ["\U0001f600"]


class TestEncoderLimits:
    def test_counters_saturate_at_max_safe_integer(self) -> None:
        """JavaScript cannot hold a larger count exactly, and decode would call it corrupt."""
        session = Session.new(datetime(2026, 1, 1, tzinfo=timezone.utc))
        huge = 2**60
        record = Record(
            replace(session, stats=SessionStats(huge, 1, huge, 2), tools={"t": ToolStats(huge)})
        )
        document = strict_json(encode(record))
        assert list(document["stats"].values()) == [MAX_SAFE_INTEGER, 1, MAX_SAFE_INTEGER, 2]
        assert document["tools"]["t"]["calls"] == MAX_SAFE_INTEGER
        assert decode(encode(record)).session.stats.tool_calls == MAX_SAFE_INTEGER

    def test_times_saturate_at_the_largest_double(self) -> None:
        """A sum of times that overflowed to inf is written as a number, not Infinity."""
        session = Session.new(datetime(2026, 1, 1, tzinfo=timezone.utc))
        record = Record(replace(session, tools={"t": ToolStats(1, 0, 0, math.inf, math.inf)}))
        document = strict_json(encode(record))
        assert document["tools"]["t"]["totalMs"] == document["tools"]["t"]["maxMs"] > 1e308
        decode(encode(record))


async def write_bytes(path: Path, data: bytes) -> None:
    await anyio.Path(path.parent).mkdir(parents=True, exist_ok=True)
    async with aiofiles.open(path, "wb") as file:
        await file.write(data)


@pytest.mark.anyio
class TestBadFilesAtOpen:
    async def test_a_seed_file_is_adopted(self, session_path: Path) -> None:
        """Opening a file the TypeScript tool wrote keeps its id and counts."""
        await write_bytes(session_path, SEED_FILE.encode())
        async with AsyncSessionStore(session_path) as store:
            assert store.session_id == "6f1c2a4e-9d3b-4c1a-8e2f-0a1b2c3d4e5f"
            assert store.session.stats == SessionStats(42, 7, 3, 1)
            await store.increment_tool_calls()
        assert (await anyio.to_thread.run_sync(read_json, session_path))["stats"]["toolCalls"] == 43

    @pytest.mark.parametrize("content", [b"", b"not json", b'{"version": 1}'])
    async def test_a_corrupt_file_is_moved_aside_and_replaced(
        self, session_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The seed overwrites a bad file silently; we keep it and say where."""
        await write_bytes(session_path, content)
        async with AsyncSessionStore(session_path) as store:
            assert store.session.stats == SessionStats()
        [aside] = [p async for p in anyio.Path(session_path.parent).glob("session.json.corrupt-*")]
        assert await aside.read_bytes() == content
        assert str(session_path) in caplog.text
        assert str(aside) in caplog.text
        assert caplog.records[-1].levelname == "WARNING"

    async def test_quarantined_files_never_overwrite_each_other(
        self, session_path: Path, clock: Any
    ) -> None:
        """Two corrupt files in the same millisecond get two names."""
        for content in (b"first", b"second"):
            await write_bytes(session_path, content)
            async with AsyncSessionStore(session_path, clock=clock):
                pass
        asides = [p async for p in anyio.Path(session_path.parent).glob("session.json.corrupt-*")]
        assert sorted([await p.read_bytes() for p in asides]) == [b"first", b"second"]

    @pytest.mark.parametrize("version", ["2", "2.0", "1e1", "1.5", "9007199254740992", "1e400"])
    async def test_a_newer_version_is_left_untouched(
        self, session_path: Path, version: str
    ) -> None:
        """Any number above 1, however written: UnsupportedVersionError, the file unchanged."""
        content = raw_document(version=version)
        await write_bytes(session_path, content)
        with pytest.raises(UnsupportedVersionError, match=str(session_path)):
            async with AsyncSessionStore(session_path):
                pass
        assert await anyio.Path(session_path).read_bytes() == content
        assert [p async for p in anyio.Path(session_path.parent).glob("*corrupt*")] == []

    async def test_a_file_too_large_to_write_back_is_moved_aside(
        self, session_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Compact JSON that indenting would take past 16 MiB is set aside, not a dead end."""
        deep = "[" * 60 + ",".join(["1"] * 150_000) + "]" * 60
        content = raw_document(x=deep)
        assert len(content) < MAX_FILE_SIZE // 10
        await write_bytes(session_path, content)
        async with AsyncSessionStore(session_path) as store:
            await store.increment_tool_calls()
        [aside] = [p async for p in anyio.Path(session_path.parent).glob("*corrupt*")]
        assert await aside.read_bytes() == content
        assert "over the limit" in caplog.text
        assert (await anyio.to_thread.run_sync(read_json, session_path))["stats"]["toolCalls"] == 1


@pytest.mark.anyio
class TestHostileFilesAtOpen:
    @pytest.mark.parametrize("data", HOSTILE.values(), ids=HOSTILE.keys())
    async def test_the_store_moves_it_aside_and_starts_afresh(
        self, session_path: Path, data: bytes
    ) -> None:
        """Every hostile file is quarantined, byte for byte, and a valid one takes its place."""
        await write_bytes(session_path, data)
        async with AsyncSessionStore(session_path) as store:
            await store.increment_tool_calls()
        [aside] = [p async for p in anyio.Path(session_path.parent).glob("session.json.corrupt-*")]
        assert await aside.read_bytes() == data
        on_disk = decode(await anyio.Path(session_path).read_bytes())
        assert on_disk.session.session_id == store.session_id
        assert on_disk.session.stats == SessionStats(tool_calls=1)

    async def test_a_lone_surrogate_in_an_adopted_tool_name_is_kept(
        self, session_path: Path
    ) -> None:
        """A name JSON.stringify wrote with a lone surrogate is adopted, counted and reloaded."""
        await write_bytes(session_path, raw_document(tools=raw_tool().replace('"t"', '"\\udcff"')))
        async with AsyncSessionStore(session_path) as store:
            await store.increment_tool_calls()
        async with AsyncSessionStore(session_path) as store:
            assert store.session.tools["\udcff"].calls == 1
            assert store.session.stats.tool_calls == 42 + 1


@pytest.mark.anyio
class TestStrictOutputOfTheStore:
    @pytest.mark.parametrize("data", NOT_STRICT.values(), ids=NOT_STRICT.keys())
    async def test_a_file_json_parse_would_refuse_is_moved_aside(
        self, session_path: Path, data: bytes
    ) -> None:
        """The store quarantines it and writes a strict one in its place."""
        await write_bytes(session_path, data)
        async with AsyncSessionStore(session_path):
            pass
        [aside] = [p async for p in anyio.Path(session_path.parent).glob("session.json.corrupt-*")]
        assert await aside.read_bytes() == data
        strict_json(await anyio.Path(session_path).read_bytes())

    async def test_a_count_past_max_safe_integer_is_saved_as_it(self, session_path: Path) -> None:
        """Counting past 2**53 - 1 saturates on disk; the file is not ours to call corrupt."""
        async with AsyncSessionStore(session_path) as store:
            await store.increment_errors(2**60)
        async with AsyncSessionStore(session_path) as store:
            assert store.session.stats.errors == MAX_SAFE_INTEGER
        assert [p async for p in anyio.Path(session_path.parent).glob("*corrupt*")] == []


@pytest.mark.anyio
class TestUnknownKeysInsideThroughTheStore:
    async def test_a_merge_keeps_them(self, session_path: Path) -> None:
        """Counting into stats and into the tool (5 + 1 + 1) leaves the keys we do not know."""
        await write_bytes(session_path, WITH_NESTED_KEYS)
        async with AsyncSessionStore(session_path) as store:
            await store.increment_tool_calls()
            async with store.tool_call("t"):
                pass
        document = strict_json(await anyio.Path(session_path).read_bytes())
        assert (document["stats"]["toolCalls"], document["stats"]["resourceCalls"]) == (7, 9)
        assert (document["tools"]["t"]["calls"], document["tools"]["t"]["tags"]) == (2, ["io"])

    async def test_a_reset_keeps_those_in_stats_and_drops_the_tools(
        self, session_path: Path
    ) -> None:
        """A reset zeroes the counts it knows; a tool's keys go with the tool."""
        await write_bytes(session_path, WITH_NESTED_KEYS)
        async with AsyncSessionStore(session_path) as store:
            await store.reset_stats()
            async with store.tool_call("t"):
                pass
        document = strict_json(await anyio.Path(session_path).read_bytes())
        assert document["stats"]["resourceCalls"] == 9
        assert "tags" not in document["tools"]["t"]

    async def test_a_new_session_drops_them(self, session_path: Path) -> None:
        """A new session starts with fresh stats; only top-level keys carry over."""
        await write_bytes(session_path, WITH_NESTED_KEYS)
        async with AsyncSessionStore(session_path) as store:
            await store.new_session()
        document = strict_json(await anyio.Path(session_path).read_bytes())
        assert list(document["stats"]) == ["toolCalls", "promptCalls", "errors", "rateLimits"]
        assert document["plugin"] == {"theme": "dark"}


class TestHostileFilesInTheCommandLine:
    @pytest.fixture(autouse=True)
    def no_home_session(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Should --path ever be ignored, the command must not touch the user's own session."""
        monkeypatch.setenv("OCTOCODE_HOME", str(tmp_path / "home"))

    @pytest.mark.parametrize("data", HOSTILE.values(), ids=HOSTILE.keys())
    def test_new_replaces_it(
        self, tmp_path: Path, data: bytes, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`aiosessionstore new` over a hostile file moves it aside and starts a session."""
        path = tmp_path / "session.json"
        path.write_bytes(data)
        assert main(["new", "--path", str(path)]) == EXIT_CODES["ok"]
        assert decode(path.read_bytes()).session.session_id in capsys.readouterr().err
        [aside] = tmp_path.glob("session.json.corrupt-*")
        assert aside.read_bytes() == data

    def test_show_prints_a_tool_name_with_a_lone_surrogate(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A name the store adopts, and writes, the summary prints to strict UTF-8 stdout."""
        path = tmp_path / "session.json"
        path.write_bytes(raw_document(tools=raw_tool().replace('"t"', '"\\udcff"')))
        assert main(["show", "--path", str(path)]) == EXIT_CODES["ok"]

    @pytest.mark.parametrize("data", HOSTILE.values(), ids=HOSTILE.keys())
    def test_show_reports_it_corrupt(
        self, tmp_path: Path, data: bytes, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`aiosessionstore show` exits with the corrupt status and leaves the file in place."""
        path = tmp_path / "session.json"
        path.write_bytes(data)
        assert main(["show", "--path", str(path)]) == EXIT_CODES["corrupt"]
        assert "corrupt" in capsys.readouterr().err
        assert path.read_bytes() == data


NODE = shutil.which("node")

# The seed's own read path (readSessionFromDisk) and write path (createNewSession +
# writeSessionToDisk), restated in JavaScript so the test needs nothing but Node.
SEED_READ = """
const fs = require('fs');
const s = JSON.parse(fs.readFileSync(process.argv[1], 'utf8'));
if (s.version !== 1 || !s.sessionId || !s.createdAt) process.exit(3);
for (const k of ['createdAt', 'lastActiveAt'])
  if (new Date(s[k]).toISOString() !== s[k]) process.exit(4);
process.stdout.write(JSON.stringify(s));
"""
SEED_WRITE = """
const fs = require('fs');
const now = new Date().toISOString();
const s = {version: 1, sessionId: require('crypto').randomUUID(), createdAt: now,
           lastActiveAt: now, stats: {toolCalls: 5, promptCalls: 0, errors: 1, rateLimits: 0}};
fs.writeFileSync(process.argv[1], JSON.stringify(s, null, 2), {mode: 0o600});
"""


# JSON.stringify(JSON.parse(file), null, 2) compared with the file: the seed's own writer.
SEED_REWRITE = """
const fs = require('fs');
const text = fs.readFileSync(process.argv[1], 'utf8');
const again = JSON.stringify(JSON.parse(text), null, 2);
process.stdout.write(again === text ? 'same' : again);
"""


# Each timestamp of a JSON list read by Date, written back by toISOString (null: Invalid Date).
DATE_READ = """
const texts = JSON.parse(require('fs').readFileSync(0, 'utf8'));
process.stdout.write(JSON.stringify(texts.map(text => {
  const moment = new Date(text);
  return isNaN(moment) ? null : moment.toISOString();
})));
"""


def edge_timestamps() -> list[str]:
    """Timestamps at the edges of the format: years, leap days, fractions, zones."""
    dates = ["0001-01-01", "0001-03-01", "1970-01-01", "2024-02-29", "2025-02-29", "9999-12-31"]
    times = ["00:00", "23:59", "12:34:56", "23:59:59.9", "00:00:00.000", "12:00:00.1234567"]
    zones = ["Z", "+00:00", "-00:59", "+00:59", "+23:59", "-23:59", "+05:30", "+24:00"]
    return [f"{date}T{time}{zone}" for date in dates for time in times for zone in zones]


@pytest.mark.skipif(NODE is None, reason="Node.js is not installed")
@pytest.mark.anyio
class TestWithNode:
    async def test_every_timestamp_we_read_is_the_instant_date_reads(self) -> None:
        """At the edges of the format, what parse_timestamp accepts Date reads as the same."""
        texts = edge_timestamps()
        assert NODE is not None
        done = await anyio.run_process([NODE, "-e", DATE_READ], input=json.dumps(texts).encode())
        accepted = 0
        for text, seen in zip(texts, json.loads(done.stdout), strict=True):
            try:
                ours = format_timestamp(parse_timestamp(text))
            except ValueError:
                continue
            accepted += 1
            assert ours == seen, text
        assert accepted > len(texts) // 2

    async def test_json_stringify_writes_what_we_write(self, session_path: Path) -> None:
        """Lone surrogates, the largest counts, odd keys: the same bytes JSON.stringify writes."""
        record = decode(raw_document(
            stats=raw_stats(str(MAX_SAFE_INTEGER)),
            tools=raw_tool(calls=str(2**53 - 1)).replace('"t"', '"\\udfff\\u0000\\u2028"'),
            **{"\\ud800": '{"a\\udbff": ["\\ud83d\\ude00", 1.5, -0.25, null, true]}'},
        ))  # fmt: skip
        await write_bytes(session_path, encode(record))
        assert NODE is not None
        done = await anyio.run_process([NODE, "-e", SEED_REWRITE, str(session_path)])
        assert done.stdout == b"same"

    async def test_the_seed_reads_our_file(self, session_path: Path) -> None:
        """Node, validating as the seed does, accepts what we write."""
        async with AsyncSessionStore(session_path) as store:
            await store.increment_rate_limits(2)
        assert NODE is not None
        done = await anyio.run_process([NODE, "-e", SEED_READ, str(session_path)])
        seen = json.loads(done.stdout)
        assert seen["sessionId"] == store.session_id
        assert seen["stats"]["rateLimits"] == 2

    async def test_we_read_the_seeds_file(self, session_path: Path) -> None:
        """A session Node wrote as the seed does opens here with its counts."""
        await anyio.Path(session_path.parent).mkdir(parents=True)
        assert NODE is not None
        await anyio.run_process([NODE, "-e", SEED_WRITE, str(session_path)])
        async with AsyncSessionStore(session_path) as store:
            assert store.session.stats == SessionStats(5, 0, 1, 0)


def test_record_round_trip_keeps_extras() -> None:
    """Record.with_session changes the session and nothing else."""
    record = decode(json.dumps(valid_document() | {"x": 1}).encode())
    changed = record.with_session(stats=SessionStats(1, 2, 3, 4))
    assert changed.extra == {"x": 1}
    assert isinstance(changed, Record)


#: Any str, lone surrogates included, as surrogateescape makes them; but no high surrogate
#: before a low one, which JSON (as a JS string) cannot tell from the character they encode.
texts = st.text(st.characters(codec=None, exclude_categories=())).filter(
    lambda text: not re.search("[\ud800-\udbff][\udc00-\udfff]", text)
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**1000), 2**1000)
    | st.floats(allow_nan=False, allow_infinity=False) | texts,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(texts.filter(lambda key: len(key) <= 5), children, max_size=3),
    max_leaves=8,
)  # fmt: skip
times = st.floats(0, 1e9, allow_nan=False, allow_infinity=False)
counts = st.integers(0, MAX_SAFE_INTEGER)  # larger counts saturate: TestEncoderLimits
latencies = st.dictionaries(st.integers(0, BUCKETS - 1), counts, max_size=4)
tool_stats = st.builds(ToolStats, counts, counts, counts, times, times, latencies)
client_stats = st.builds(ClientStats, counts, counts)
moments = st.datetimes(timezones=st.just(timezone.utc)).map(
    lambda moment: moment.replace(microsecond=moment.microsecond // 1000 * 1000)
)


def unknown_members(known: set[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Members of an object whose keys are none of the ``known`` ones."""
    return st.dictionaries(texts.filter(lambda key: key not in known), json_values, max_size=3)


@st.composite
def records(draw: st.DrawFn) -> Record:
    """A record as decode could make it, unknown keys at every level included."""
    tools = draw(st.dictionaries(texts, tool_stats, max_size=4))
    prompts = draw(st.dictionaries(texts, tool_stats, max_size=3))
    clients = draw(st.dictionaries(texts, client_stats, max_size=3))
    session = Session(
        1,
        draw(st.text(min_size=1)),
        draw(moments),
        draw(moments),
        draw(st.builds(SessionStats, counts, counts, counts, counts)),
        tools,
        prompts,
        clients,
    )
    call_keys = {"calls", "errors", "rateLimits", "totalMs", "maxMs", "latency"}
    entries_extra = {
        section: extra
        for section, entries, known in (
            ("tools", tools, call_keys),
            ("prompts", prompts, call_keys),
            ("clients", clients, {"toolCalls", "promptCalls"}),
        )
        if (extra := {n: e for n in entries if (e := draw(unknown_members(known)))})
    }
    return Record(
        session,
        draw(unknown_members({"version", "sessionId", "createdAt", "lastActiveAt", "stats",
                              "tools", "prompts", "clients"})),
        draw(unknown_members({"toolCalls", "promptCalls", "errors", "rateLimits"})),
        entries_extra,
    )  # fmt: skip


def reference_encoding(record: Record) -> bytes:
    """What JSON.stringify(document, null, 2) writes: json.dumps(indent=2), surrogates escaped."""
    session, stats = record.session, record.session.stats
    document: dict[str, Any] = {
        "version": session.version,
        "sessionId": session.session_id,
        "createdAt": format_timestamp(session.created_at),
        "lastActiveAt": format_timestamp(session.last_active_at),
        "stats": {"toolCalls": stats.tool_calls, "promptCalls": stats.prompt_calls,
                  "errors": stats.errors, "rateLimits": stats.rate_limits},
    }  # fmt: skip
    document["stats"].update(record.stats_extra)
    extra = record.entries_extra
    for section, entries in (("tools", session.tools), ("prompts", session.prompts)):
        if entries:
            document[section] = {
                name: {"calls": calls.calls, "errors": calls.errors,
                       "rateLimits": calls.rate_limits, "totalMs": round(calls.total_ms, 3),
                       "maxMs": round(calls.max_ms, 3),
                       **({"latency": {str(i): calls.latency[i] for i in sorted(calls.latency)}}
                          if calls.latency else {}),
                       **extra.get(section, {}).get(name, {})}
                for name, calls in entries.items()
            }  # fmt: skip
    if session.clients:
        document["clients"] = {
            name: {"toolCalls": client.tool_calls, "promptCalls": client.prompt_calls,
                   **extra.get("clients", {}).get(name, {})}
            for name, client in session.clients.items()
        }  # fmt: skip
    document.update(record.extra)
    text = json.dumps(document, indent=2, ensure_ascii=False)
    return re.sub("[\ud800-\udfff]", lambda lone: f"\\u{ord(lone[0]):04x}", text).encode()


@settings(max_examples=100, deadline=None)
@given(records())
def test_the_fast_encoder_writes_what_json_dumps_would(record: Record) -> None:
    """The hand-written encoder is byte for byte json.dumps(indent=2), and decodes back."""
    assert encode(record) == reference_encoding(record)
    decoded = decode(encode(record))
    assert decoded.session.stats == record.session.stats
    assert decoded.session.session_id == record.session.session_id
    assert decoded.session.clients == record.session.clients
    assert [t.latency for t in decoded.session.tools.values()] == [
        t.latency for t in record.session.tools.values()
    ]
    assert (decoded.extra, decoded.stats_extra, decoded.entries_extra) == (
        record.extra,
        record.stats_extra,
        record.entries_extra,
    )
