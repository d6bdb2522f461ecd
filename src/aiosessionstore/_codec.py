"""The session file's JSON, both ways: the TypeScript tool's ``JSON.stringify(session, null,
2)``, with our own sections ("tools", "prompts", "clients") and any keys we do not know kept.
"""

from __future__ import annotations

import codecs
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from functools import partial
from itertools import chain, compress, count, islice
from operator import is_not
from types import MappingProxyType
from typing import Any, NamedTuple, NoReturn, TypeVar

from ._errors import CorruptSessionError, UnsupportedVersionError
from ._latency import BUCKETS
from ._names import copied
from ._session import (
    CURRENT_VERSION,
    MAX_COUNT,
    ClientStats,
    Record,
    Session,
    SessionStats,
    ToolStats,
    format_timestamp,
    parse_timestamp,
    shown,
)

__all__ = ("Encoded", "decode", "decode_after", "encode", "encode_after", "encode_parts_after")

_T = TypeVar("_T")

#: JSON key of each counter, in field order of SessionStats.
_STAT_KEYS = ("toolCalls", "promptCalls", "errors", "rateLimits")
_TOOL_KEYS = ("calls", "errors", "rateLimits", "totalMs", "maxMs", "latency")
_CLIENT_KEYS = ("toolCalls", "promptCalls")
#: Our sections, each an object of entries by name, in the order they are written.
_SECTIONS = ("tools", "prompts", "clients")
_SECTION_KEYS = frozenset(_SECTIONS)
_KNOWN_KEYS = frozenset({"version", "sessionId", "createdAt", "lastActiveAt", "stats", *_SECTIONS})
#: Deepest nesting kept: json.dumps(indent=2) recurses in Python, so a deeper value adopted at
#: open would raise RecursionError at every flush after it.
_MAX_DEPTH = 64
_MAX_MS = sys.float_info.max
_SURROGATE = re.compile("[\ud800-\udfff]")
#: Indents of JSON.stringify(…, null, 2) at the top level, in stats, and in an entry.
_AT_TOP, _IN_STATS, _IN_ENTRY = " " * 2, " " * 4, " " * 6
#: Made once: json.dumps makes a new encoder for every call that is not all defaults.
_STRING = json.JSONEncoder(ensure_ascii=False).encode
_VALUE = json.JSONEncoder(ensure_ascii=False, allow_nan=False, indent=2).encode


def encode(record: Record) -> bytes:
    """The file's bytes: the seed's ``JSON.stringify(session, null, 2)``, unknown keys kept.

    Written out by hand because ``json.dumps`` with ``indent`` falls back to its pure-Python
    encoder; this is the same text (a test holds it to that) in a third of the time, spent
    in a worker thread that holds the GIL while it runs. What it writes is strict JSON in
    UTF-8 that decode() accepts: a count above MAX_COUNT is written as MAX_COUNT, a time past
    the largest double as that double, and a lone surrogate as JSON.stringify's escape.
    """
    return b"".join(_encode(record, None, keep=False)[0])


_EMPTY: Mapping[str, Any] = MappingProxyType({})

_MISSING = object()

#: Entries per block: a section's lines are kept joined in blocks of this many, so that a
#: change joins again only the blocks it falls in, and the file is joined from the blocks.
_BLOCK = 64


class _Kept:
    """What an encode keeps of one section for the next: each entry's own line (what encode
    writes of the entry as decode reads it back), the names in order, and the lines joined
    in blocks of ``_BLOCK``."""

    __slots__ = ("blocks", "lines", "names", "positions", "text")

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.names: list[str] = []
        self.blocks: list[bytes] = []
        #: Each name's index in ``names``; made when first needed, then kept up to date.
        self.positions: dict[str, int] | None = None
        #: The blocks joined, made the first time an encode leaves the section alone.
        self.text: bytes | None = None

    def whole(self) -> list[bytes]:
        """The section's blocks as one part, which a flush compares in one go."""
        text = self.text
        if text is None:
            text = self.text = b"".join(self.blocks)
        return [text]

    def position(self, name: str) -> int | None:
        positions = self.positions
        if positions is None:
            names = self.names
            positions = self.positions = dict(zip(names, range(len(names)), strict=True))
        return positions.get(name)


class Encoded:
    """Bytes that ``encode`` wrote, in parts, with what lets the next encode reuse them.

    ``record`` is what ``decode(data)`` returns (equal to it, field by field), built without
    parsing: so a reader that finds exactly ``data`` on disk again may take ``record`` as
    read. ``sections`` holds, by section, the line of each entry of ``record`` in its order
    (and the lines joined in blocks): the next encode of a record built on ``record`` encodes
    only the entries that are not the very objects (held here, so no other object can take
    their place) that these came from.

    The bytes are kept as the parts they were written from (``os.writev``), never joined: a
    join copies the whole file, holding the GIL. One encode may build on it, once: that
    encode takes its sections over and changes them in place, so that a flush costs what
    changed, not a copy of every line.
    """

    __slots__ = ("parts", "record", "sections", "size", "spent")

    def __init__(
        self, parts: Sequence[bytes], record: Record, sections: Mapping[str, _Kept] = _EMPTY
    ) -> None:
        self.parts = parts
        self.size = sum(map(len, parts))
        self.record = record
        self.sections = sections
        #: Whether an encode has built on it already: it is of no use to another.
        self.spent = False

    @classmethod
    def decoded(cls, data: bytes, record: Record) -> Encoded:
        """``record`` as decode() returned it for ``data``: no line of it encoded yet."""
        return cls((data,), record)

    @property
    def data(self) -> bytes:
        return b"".join(self.parts)

    def matches(self, data: bytes) -> bool:
        """Whether ``data`` is exactly these bytes: compared part by part, in place."""
        if len(data) != self.size:
            return False
        offset = 0
        for part in self.parts:
            if not data.startswith(part, offset):
                return False
            offset += len(part)
        return True


def encode_after(
    record: Record,
    previous: Encoded | None,
    touched: Mapping[str, Collection[str]] | None = None,
) -> tuple[bytes, Encoded | None]:
    """As ``encode_parts_after``, with the bytes joined: for a caller that needs them whole."""
    parts, encoded = encode_parts_after(record, previous, touched)
    return b"".join(parts), encoded


def encode_parts_after(
    record: Record,
    previous: Encoded | None,
    touched: Mapping[str, Collection[str]] | None = None,
) -> tuple[list[bytes], Encoded | None]:
    """``encode(record)``, the same bytes in parts (to write as they are, with
    ``os.writev``), reusing the lines of entries unchanged since ``previous``; and what the
    next call may reuse (None where no decode would give it).

    ``touched``, for a record that a merge built on ``previous.record``: by section, the
    names whose entries the merge may have replaced or added (``Change.touched``). Every
    other entry is then taken to be the very object it was, in its place, so the entries
    are not compared one by one: the flush costs the names it changed, however many there
    are. Without it, the entries are compared by identity (in C, but each of them).
    """
    if previous is not None:
        if previous.spent:
            previous = None
        else:
            previous.spent = True
    return _encode(record, previous, keep=True, touched=touched)


def _utf8(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate, which UTF-8 cannot hold
        return _SURROGATE.sub(_escape, text).encode()


def _encode(
    record: Record,
    previous: Encoded | None,
    keep: bool,
    touched: Mapping[str, Collection[str]] | None = None,
) -> tuple[list[bytes], Encoded | None]:
    session = record.session
    stats = session.stats
    tool_calls, prompt_calls, errors, rate_limits = map(
        _count, (stats.tool_calls, stats.prompt_calls, stats.errors, stats.rate_limits)
    )
    head = (
        f'{{\n  "version": {session.version},\n'
        f'  "sessionId": {_STRING(session.session_id)},\n'
        f'  "createdAt": "{format_timestamp(session.created_at)}",\n'
        f'  "lastActiveAt": "{format_timestamp(session.last_active_at)}",\n'
        f'  "stats": {{\n    "toolCalls": {tool_calls},\n'
        f'    "promptCalls": {prompt_calls},\n    "errors": {errors},\n'
        f'    "rateLimits": {rate_limits}{_members(record.stats_extra, _IN_STATS)}\n  }}'
    )
    parts = [_utf8(head)]
    extra = record.entries_extra
    sections: dict[str, Mapping[str, Any]] = {}
    kept: dict[str, _Kept] = {}
    before = None if previous is None else previous.record.session
    # Each section is absent, not empty, while it has no entry: the seed's own file.
    for codec in _ENTRY_CODECS:
        section = codec.section
        entries = getattr(session, section)
        if not entries:
            continue
        made = _section(
            entries,
            codec.encode,
            codec.canonical if keep else None,
            codec.same_line,
            extra.get(section, _NONE),
            _NONE if before is None else getattr(before, section),
            None if previous is None else previous.sections.get(section),
            None if touched is None else touched.get(section),
        )
        parts.append(_OPENING[section])
        parts += made.blocks
        parts.append(b"\n  }")
        if made.canonical is None:
            keep = False
        elif keep:
            sections[section] = made.canonical
            if made.kept is not None:
                kept[section] = made.kept
    parts += (_utf8(_members(record.extra, _AT_TOP)), b"\n}")
    if not keep:
        return parts, None
    as_read = _as_decoded(record, sections)
    return parts, None if as_read is None else Encoded(parts, as_read, kept)


def _escape(match: re.Match[str]) -> str:
    """A lone surrogate as JSON.stringify writes it: an escape, in a string it can only be in."""
    return f"\\u{ord(match[0]):04x}"


def _members(members: Mapping[str, Any], indent: str) -> str:
    """Members of an object after the ones we know: a comma, then each on a line of its own."""
    lines = []
    for key, value in members.items():
        nested = _VALUE(value).replace("\n", "\n" + indent)
        lines.append(f",\n{indent}{_STRING(key)}: {nested}")
    return "".join(lines)


def _count(count: int) -> int:
    """The count clamped to what decode accepts: 0 to MAX_COUNT."""
    return count if 0 <= count <= MAX_COUNT else max(0, min(count, MAX_COUNT))


def _milliseconds(ms: float) -> float:
    """The time clamped to what decode accepts: 0 to the largest double, and NaN as 0."""
    return ms if 0.0 <= ms <= _MAX_MS else min(ms, _MAX_MS) if ms > 0.0 else 0.0


_OPENING = {section: f',\n  "{section}": {{\n'.encode() for section in _SECTIONS}


class _Section:
    """A section's blocks of lines as written; and, where asked for, its entries as decode()
    returns them, with what the next encode may reuse (None: nothing)."""

    __slots__ = ("blocks", "canonical", "kept")

    def __init__(
        self, blocks: list[bytes], canonical: Mapping[str, Any] | None, kept: _Kept | None
    ) -> None:
        self.blocks = blocks
        self.canonical = canonical
        self.kept = kept


def _section(
    entries: Mapping[str, _T],
    encode_entry: Callable[[_T, str], str],
    canonical_entry: Callable[[_T], _T | None] | None,
    same_line: Callable[[_T], bool],
    extra: Mapping[str, Mapping[str, Any]],
    before: Mapping[str, _T],
    kept: _Kept | None,
    touched: Collection[str] | None,
) -> _Section:
    """Each entry's line, joined in blocks. With ``canonical_entry``, also what the next
    encode may reuse: ``before`` holds entries as decode() returned them, ``kept`` (if any)
    their own lines, which this takes over; the line of an entry that is the same object
    under the same name is reused. ``touched``: see ``encode_parts_after``."""

    def line(name: str, entry: _T) -> bytes:
        more = _members(extra[name], _IN_ENTRY) if name in extra else ""
        return _line(encode_entry, name, entry, more)

    def plain() -> _Section:
        lines = [line(name, entry) for name, entry in _paced(entries.items())]
        return _Section([b",\n".join(lines)], None, None)  # one block

    if canonical_entry is None:
        return plain()
    if kept is None or extra or len(kept.lines) != len(before):
        kept = None  # nothing to reuse (a newer tool's keys: the lines are made each time)
    elif entries is before:
        return _Section(kept.whole(), before, kept)  # a section this change left alone
    changes = None if kept is None else _changes(entries, before, kept, touched)
    if kept is None or changes is None:
        kept, changes = _Kept(), (list(entries), [])
    added, stale = changes
    lines, names, positions = kept.lines, kept.names, kept.positions
    first_added = len(names)
    names += added
    lines += [b""] * len(added)
    if positions is not None:
        positions.update(zip(added, range(first_added, len(names)), strict=True))
    canonical: dict[str, _T] = {}
    written: dict[int, bytes] = {}  # lines written otherwise than the entry's own
    for index in _paced(chain(stale, range(first_added, len(names)))):
        name = names[index]
        entry = entries[name]
        lines[index] = text = line(name, entry)
        if before.get(name) is entry:
            continue  # as decoded: its line is its own
        as_read = canonical_entry(entry)
        if as_read is None:
            return plain()
        canonical[name] = as_read
        if same_line(entry):
            continue  # its line is that of the entry as decode reads it back
        own_text = line(name, as_read)
        if own_text != text:  # a time of 5 is written "5", read back as 5.0: written "5.0"
            lines[index] = own_text
            written[index] = text
    rejoin = [*stale, first_added] if added else stale
    blocks = kept.blocks = _joined(kept.blocks, lines, rejoin)
    kept.text = None
    if written:
        blocks = _joined(blocks, _overlaid(lines, written), written)
    if extra:
        kept = None
    if not canonical:
        return _Section(blocks, entries, kept)
    merged = copied(entries)  # in one go: {**entries} goes key by key (60 µs at 1,000)
    merged.update(canonical)
    return _Section(blocks, MappingProxyType(merged), kept)


def _changes(
    entries: Mapping[str, Any],
    before: Mapping[str, Any],
    kept: _Kept,
    touched: Collection[str] | None,
) -> tuple[list[str], list[int]] | None:
    """The names added after ``kept``'s, and the positions of the entries that are not the
    very objects they were; None if ``entries`` do not start with ``kept``'s names."""
    known = len(kept.names)
    count = len(entries)
    if count < known:
        return None
    if touched is not None:  # a merge on ``before``: only the names it touched may differ
        if type(entries) is MappingProxyType:  # of a dict: the last names, at once
            added: list[str] = list(islice(reversed(entries), count - known))
            added.reverse()
        else:
            added = list(entries)[known:]
        if not all(name in touched and kept.position(name) is None for name in added):
            return None
        replaced: set[int] = set()
        for name in touched:
            index = kept.position(name)
            if index is not None and index < known:
                entry = entries.get(name, _MISSING)
                if entry is _MISSING:
                    return None  # a merge removes no name
                if entry is not before[name]:
                    replaced.add(index)
        return added, sorted(replaced)
    names = list(entries)
    if names[:known] != kept.names:
        return None  # not the same names in the same order: nothing lines up
    # Positions holding another entry than before: found in C, not in a loop of Python.
    stale = list(compress(range(known), map(is_not, entries.values(), before.values())))
    return names[known:], stale


def _joined(blocks: list[bytes], lines: list[bytes], changed: Iterable[int]) -> list[bytes]:
    """``blocks`` of ``lines`` with each block that holds a ``changed`` index joined again,
    and the blocks of lines past their end made. Each block but the last ends with the comma
    and newline before the next."""
    blocks = list(blocks)
    count = (len(lines) + _BLOCK - 1) // _BLOCK
    dirty = {index // _BLOCK for index in changed}
    if len(blocks) < count:
        dirty.update(range(max(len(blocks) - 1, 0), count))  # the last one gains its comma
    last = count - 1
    for number in sorted(dirty):
        start = number * _BLOCK
        chunk = lines[start : start + _BLOCK]
        if number < last:
            chunk.append(b"")  # so that the join ends with the separator
        block = b",\n".join(chunk)
        if number < len(blocks):
            blocks[number] = block
        else:
            blocks.append(block)
    return blocks


def _line(encode_entry: Callable[[_T, str], str], name: str, entry: _T, more: str) -> bytes:
    """An entry as a section holds it: its name, then the entry, with ``more`` (the keys it
    has that we do not know) written last."""
    return _utf8(f"    {_STRING(name)}: {encode_entry(entry, more)}")


def _overlaid(lines: list[bytes], written: Mapping[int, bytes]) -> list[bytes]:
    lines = list(lines)
    for index, text in written.items():
        lines[index] = text
    return lines


def _encode_client(client: ClientStats, more: str) -> str:
    return (
        f'{{\n      "toolCalls": {_count(client.tool_calls)},\n'
        f'      "promptCalls": {_count(client.prompt_calls)}{more}\n    }}'
    )


def _encode_latency(latency: Mapping[int, int]) -> str:
    """The buckets with calls in them, in the order JavaScript keeps integer keys: ascending."""
    if not latency:
        return ""
    buckets = ",\n".join(
        f'        "{index}": {_count(latency[index])}' for index in sorted(latency)
    )
    return f',\n      "latency": {{\n{buckets}\n      }}'


def _encode_calls(tool: ToolStats, more: str) -> str:
    calls, errors, rate_limits = tool.calls, tool.errors, tool.rate_limits
    total_ms, max_ms = round(tool.total_ms, 3), round(tool.max_ms, 3)  # µs are plenty
    # One test on the path every flush takes; the rare value out of range is clamped after.
    if not (
        0 <= calls <= MAX_COUNT
        and 0 <= errors <= MAX_COUNT
        and 0 <= rate_limits <= MAX_COUNT
        and 0.0 <= total_ms <= _MAX_MS
        and 0.0 <= max_ms <= _MAX_MS
    ):
        calls, errors, rate_limits = _count(calls), _count(errors), _count(rate_limits)
        total_ms, max_ms = _milliseconds(total_ms), _milliseconds(max_ms)
    return (
        f'{{\n      "calls": {calls},\n      "errors": {errors},\n'
        f'      "rateLimits": {rate_limits},\n      "totalMs": {total_ms!r},\n'
        f'      "maxMs": {max_ms!r}{_encode_latency(tool.latency)}{more}\n    }}'
    )


def _decoded_calls(tool: ToolStats) -> ToolStats | None:
    """The entry as decode() reads back what _encode_calls writes of it; None if it refuses
    it (a latency bucket that does not exist)."""
    latency = tool.latency
    if latency:
        if not all(type(index) is int and 0 <= index < BUCKETS for index in latency):
            return None
        latency = MappingProxyType({index: _count(latency[index]) for index in sorted(latency)})
    return ToolStats(
        _count(tool.calls),
        _count(tool.errors),
        _count(tool.rate_limits),
        float(_milliseconds(round(tool.total_ms, 3))),
        float(_milliseconds(round(tool.max_ms, 3))),
        latency if latency else _NO_LATENCY,
    )


def _decoded_client(client: ClientStats) -> ClientStats:
    return ClientStats(_count(client.tool_calls), _count(client.prompt_calls))


def _floats(tool: ToolStats) -> bool:
    """Whether a tool's line is that of the tool as decode reads it back: so unless a time
    is no float (a time of 5 is written "5", read back as 5.0); the rest reads back as
    written, clamped or not."""
    return type(tool.total_ms) is float and type(tool.max_ms) is float


def _always(_client: ClientStats) -> bool:
    return True  # counts read back as written, clamped or not


def _as_decoded(record: Record, sections: Mapping[str, Mapping[str, Any]]) -> Record | None:
    """What decode() returns for encode(record), given its sections as decoded; None where
    decode would refuse it (an id it cannot read back) or cannot be foreseen cheaply."""
    session = record.session
    session_id = session.session_id
    if session.version != CURRENT_VERSION or not session_id or _SURROGATE.search(session_id):
        return None
    try:
        created_at = _as_read(session.created_at)
        last_active_at = _as_read(session.last_active_at)
    except ValueError:
        return None
    stats = session.stats
    entries_extra = record.entries_extra
    if not all(entries_extra.values()):  # decode keeps no section whose entries have none
        kept = {section: extra for section, extra in entries_extra.items() if extra}
        entries_extra = MappingProxyType(kept) if kept else _NONE
    return Record(
        Session(
            CURRENT_VERSION,
            session_id,
            created_at,
            last_active_at,
            SessionStats(
                _count(stats.tool_calls),
                _count(stats.prompt_calls),
                _count(stats.errors),
                _count(stats.rate_limits),
            ),
            sections.get("tools", _NONE),
            sections.get("prompts", _NONE),
            sections.get("clients", _NONE),
        ),
        record.extra,
        record.stats_extra,
        entries_extra,
    )


def _as_read(moment: datetime) -> datetime:
    """What decode() reads back of the timestamp that encode() writes of ``moment``."""
    if moment.tzinfo is timezone.utc and moment.microsecond % 1000 == 0:
        return moment  # already what parsing its text gives: a UTC time to the millisecond
    return parse_timestamp(format_timestamp(moment))


def decode(data: bytes) -> Record:
    """Parse and validate a session file; CorruptSessionError says what is wrong with it.

    It accepts what the TypeScript tool can read back as the same session: strict JSON
    (RFC 8259) in UTF-8, counts that are safe integers, finite times, and unknown values that
    are no deeper than 64 levels and hold no number that JavaScript would read as Infinity.
    """
    document = _parse(data)
    if type(document) is not dict:
        raise CorruptSessionError("not a JSON object")
    session_id, stats = _head(document)
    sections = {
        codec.section: _decode_section(document, codec.section, codec.decode, codec.known)
        for codec in _ENTRY_CODECS
    }
    return _record(document, session_id, stats, sections)


def _head(document: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The version checked, the session id and the stats object of a document."""
    _refuse_a_newer_version(document.get("version"))
    version = _safe_integer(document, "version")
    if version < 1:
        raise CorruptSessionError(f"version {version} is not a valid version")
    session_id = _string(document, "sessionId")
    if not session_id:
        raise CorruptSessionError("sessionId is empty")
    if _SURROGATE.search(session_id):  # it goes into logs and headers, which need UTF-8
        raise CorruptSessionError(f"sessionId is not valid Unicode: {shown(session_id)}")
    return session_id, _object(document, "stats")


def _record(
    document: dict[str, Any],
    session_id: str,
    stats: dict[str, Any],
    sections: Mapping[str, tuple[Mapping[str, Any], Mapping[str, Mapping[str, Any]]]],
) -> Record:
    """The record of a document whose version, id and stats object are checked, and whose
    sections are decoded: the times, the counts and the unknown keys checked here."""
    session = Session(
        version=CURRENT_VERSION,
        session_id=session_id,
        created_at=_timestamp(document, "createdAt"),
        last_active_at=_timestamp(document, "lastActiveAt"),
        stats=SessionStats(*(_safe_integer(stats, key, "stats.") for key in _STAT_KEYS)),
        tools=sections["tools"][0],
        prompts=sections["prompts"][0],
        clients=sections["clients"][0],
    )
    entries_extra = {section: extra for section, (_, extra) in sections.items() if extra}
    return Record(
        session,
        _unknown(document, _KNOWN_KEYS, 2),
        _unknown(stats, _STAT_KEYS, 3) if len(stats) > len(_STAT_KEYS) else _NONE,
        MappingProxyType(entries_extra) if entries_extra else _NONE,
    )


def decode_after(data: bytes, previous: Encoded | None) -> Encoded:
    """``decode(data)``, as an Encoded the next encode may build on. ``previous``, what this
    process wrote last, spares parsing and checking again what ``data`` still holds of it.

    A file another of our processes rewrote holds most of our lines as we wrote them: the
    same entries in the same places, a few changed. Where ``data`` holds, at an entry's place,
    the very line ``previous`` wrote of it, the entry is taken as it was; every other stretch
    is parsed by ``json`` and checked. The result is ``decode(data)``'s: each stretch parsed
    alone is whole members, and whole members joined by the punctuation found between them
    are the document (a property test holds it to decode). So a flush after another writer
    costs what it changed, with no long stretch holding the GIL. A file in any other layout,
    and anything wrong, is left to ``decode``.
    """
    if previous is not None and previous.sections and not previous.spent:
        read = _read_after(data, previous)
        if read is not None:
            return read
    return Encoded.decoded(data, decode(data))


#: Where our layout (JSON.stringify's, indented by 2) ends an entry, goes on to the next one,
#: and ends a section. No string holds a line break, and nothing inside an entry is indented
#: by only 4, so these are found nowhere else in a file we wrote.
_ENTRY_END = b"\n    }"
_NEXT = b",\n"
_SECTION_END = b"\n  }"


def _read_after(data: bytes, previous: Encoded) -> Encoded | None:
    """``decode_after``'s reading: None for anything but our layout, or anything wrong."""
    sections: dict[str, tuple[Mapping[str, Any], Mapping[str, Any]]] = {}
    kept: dict[str, _Kept] = {}
    head_end = -1
    position = 0
    for codec in _ENTRY_CODECS:
        section = codec.section
        at = data.find(_OPENING[section], position)
        if at < 0:
            sections[section] = (_NONE, _NONE)
            continue
        if head_end < 0:
            head_end = at
        elif at != position:
            return None  # something between two sections: not our layout
        read = _read_section(
            data,
            at + len(_OPENING[section]),
            codec,
            previous.sections.get(section),
            getattr(previous.record.session, section),
        )
        if read is None:
            return None
        position, entries, kept[section] = read
        sections[section] = (entries, _NONE)
        if len(entries) > STEP:  # up to max_tools entries: let an event loop in between
            pause()
    if head_end < 0:
        return None  # no section: a small file, parsed whole
    document = _members_of(data[:head_end] + b"}")  # "{" and the members before the sections
    rest = data[position:]  # "," and the members after them, and "}"; or "}" alone
    more = rest.startswith(b",")
    tail = _members_of(b"{" + rest[1:] if more else b"{" + rest)
    if not document or tail is None or bool(tail) != more:
        return None
    if not _SECTION_KEYS.isdisjoint(document) or not _SECTION_KEYS.isdisjoint(tail):
        return None  # a section in another layout: parsed whole
    document.update(tail)  # a key twice: the last value, in the first place, as json does
    try:
        session_id, stats = _head(document)
        record = _record(document, session_id, stats, sections)
    except (CorruptSessionError, UnsupportedVersionError):
        return None  # decode says what is wrong
    return Encoded((data,), record, kept)


def _read_section(
    data: bytes, position: int, codec: _EntryCodec, old: _Kept | None, before: Mapping[str, Any]
) -> tuple[int, Mapping[str, Any], _Kept] | None:
    """The section whose first entry is at ``position``: where it ends, its entries, and
    their lines; None if it is not in our layout, or holds anything decode would not keep as
    it is. ``old``: the lines ``previous`` wrote of the entries ``before``, which are taken
    as they were where ``data`` holds them; in blocks too, compared whole."""
    if old is None:
        before = _NONE  # no line of them to find: nothing is taken as it was
    old_names = [] if old is None else old.names
    old_lines = [] if old is None else old.lines
    old_blocks = [] if old is None else old.blocks
    made = _Kept()
    names, lines = made.names, made.lines
    parsed: dict[str, Any] = {}  # the entries this read parsed, by name
    places: list[int] = []  # and their places
    index = 0  # the place in ``old`` of the line expected next
    for _ in _paced(count()):
        number, offset = divmod(index, _BLOCK)
        block = old_blocks[number] if offset == 0 and number < len(old_blocks) - 1 else None
        if block is not None and len(names) == index and data.startswith(block, position):
            names += old_names[index : index + _BLOCK]  # with the comma after: not the last
            lines += old_lines[index : index + _BLOCK]
            position += len(block)
            index += _BLOCK
            continue
        line = old_lines[index] if index < len(old_lines) else None
        if line is not None and data.startswith(line, position):
            names.append(old_names[index])
            position += len(line)
            index += 1
        else:
            read = _read_entry(data, position, codec)
            if read is None:
                return None
            position, name, parsed[name], line = read
            places.append(len(names))
            names.append(name)
            if index < len(old_names) and old_names[index] == name:
                index += 1  # changed in its place
            elif old is not None and (at := old.position(name)) is not None:
                index = at + 1
        lines.append(line)
        if data.startswith(_NEXT, position):
            position += len(_NEXT)
        elif data.startswith(_SECTION_END, position):
            break
        else:
            return None
    if names[: len(old_names)] == old_names:  # ours, in their places: their blocks too
        entries = copied(before)  # in one go
        entries.update(parsed)  # in their places, and the names after ours in order
        made.blocks = _joined(old_blocks, lines, places)
    else:
        entries = {name: parsed[name] if name in parsed else before[name] for name in names}
        made.blocks = _joined([], lines, range(len(lines)))
    if len(entries) != len(names) or len(parsed) != len(places):
        return None  # a name twice: parsed whole
    return position + len(_SECTION_END), MappingProxyType(entries), made


def _read_entry(
    data: bytes, position: int, codec: _EntryCodec
) -> tuple[int, str, Any, bytes] | None:
    """The entry at ``position``, parsed and checked: where it ends, its name, the entry,
    and its line as encode writes it. None if it is not one whole entry decode keeps as is."""
    end = data.find(_ENTRY_END, position)
    if end < 0:
        return None
    end += len(_ENTRY_END)
    member = _members_of(b"{" + data[position:end] + b"}")
    if member is None or len(member) != 1:
        return None
    ((name, value),) = member.items()
    if type(value) is not dict or any(key not in codec.known for key in value):
        return None  # not an entry, or one with keys we do not know: decode says
    try:
        entry = codec.decode(value)
    except CorruptSessionError:
        return None
    return end, name, entry, _line(codec.encode, name, entry, "")


def _members_of(text: bytes) -> dict[str, Any] | None:
    """The object that ``text`` is, in strict JSON and UTF-8; None for anything else."""
    try:
        value = json.loads(text.decode(), parse_constant=_refuse_constant)
    except (ValueError, RecursionError, CorruptSessionError):
        return None
    return value if type(value) is dict else None


def _refuse_a_newer_version(version: object) -> None:
    """Any number above ours, however spelled (2, 2.0, 1e1, 2**60): JavaScript reads each as a
    newer version, so a newer tool's file is left untouched, never moved aside as corrupt."""
    if type(version) in (int, float) and _float(version) > CURRENT_VERSION:  # type: ignore[arg-type]
        shown_version = shown(version)
        raise UnsupportedVersionError(
            f"session format version {shown_version} is newer than version {CURRENT_VERSION}, "
            "the newest this aiosessionstore reads: upgrade aiosessionstore"
        )


_NONE: Mapping[str, Any] = MappingProxyType({})
_NO_LATENCY: Mapping[int, int] = MappingProxyType({})


def _unknown(members: dict[str, Any], known: Collection[str], depth: int) -> Mapping[str, Any]:
    """The members whose keys are not ``known``, checked; ``depth`` is their level."""
    unknown = {key: value for key, value in members.items() if key not in known}
    for key, value in unknown.items():
        _check_unknown(key, value, depth)
    return MappingProxyType(unknown)


def _parse(data: bytes) -> Any:
    """The JSON document in UTF-8 bytes (RFC 8259), any error of the parser made corrupt."""
    if data.startswith(codecs.BOM_UTF8):  # RFC 8259 lets a parser ignore it; we write none
        data = data[len(codecs.BOM_UTF8) :]
    try:
        # Decoded here: json.loads(bytes) lets UTF-8-encoded surrogates through.
        text = data.decode()
        return _loads_in_steps(text) or json.loads(text, parse_constant=_refuse_constant)
    except UnicodeDecodeError as exc:
        raise CorruptSessionError(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise CorruptSessionError("not valid JSON (nested too deep to parse)") from None
    except ValueError as exc:  # JSONDecodeError, or an integer of over 4300 digits
        raise CorruptSessionError(f"not valid JSON ({exc})") from None


#: Lets go of the GIL, and of the CPU, between two stretches of Python on the store's thread.
#: An event loop woken meanwhile (a request on a socket) waits for the GIL until this thread
#: lets go of it. A plain release (``time.sleep(0)``) seldom hands it over: this thread takes
#: it back before the waiting one has woken. ``sched_yield`` gives up the CPU too, so the
#: waiting thread runs first; with no one waiting it is one system call. ``_file`` calls it
#: between the read, the merge and the encode of a flush, 100-180 µs of work each at the
#: tool-name cap (``benchmarks/loop.py``: the probe's p99 over the control at the cap
#: +0.36-0.40 ms before, +0.08-0.10 ms after, with as many flushes a second).
let_others_run: Callable[[], None] = getattr(os, "sched_yield", None) or partial(time.sleep, 0)

#: The entries checked or encoded between two pauses, and the characters of a member parsed
#: before one: under a millisecond of work. A file another process wrote (one of 1,000 each
#: of tools, prompts and clients: 744 KB) took its reader 3-9 ms of one ``json.loads`` and
#: 14 ms of checks, holding the GIL, in which an event loop on another thread could not run.
STEP = 200
_LARGE = 64 * 1024


def pause() -> None:
    """Let an event loop on another thread run, if it waits: sleep a moment. Not
    ``let_others_run``: a thread that lets go of the GIL and takes it back again and again
    keeps the waiting one from ever getting it (CPython's forced switch only comes when the
    GIL changed hands no time in its interval): a loop waited 25-40 ms."""
    time.sleep(0.00005)


def _paced(items: Iterable[_T]) -> Iterator[_T]:
    """``items``, with a ``pause`` after every STEP of them."""
    for number, item in enumerate(items, 1):
        if number % STEP == 0:
            pause()
        yield item


_SPACE = re.compile(r"[ \t\n\r]*")  # JSON's whitespace, and only it


def _loads_in_steps(text: str) -> dict[str, Any] | None:
    """``json.loads(text)`` for a JSON object, parsed member by member, with a pause after
    each large one (a section of many entries); None for anything else, or anything
    malformed, which ``json.loads`` then parses whole, to say what is wrong.

    Each member's value is parsed by the json module itself (``raw_decode``); only the
    punctuation between them is read here, as strictly as JSON has it."""
    members: dict[str, Any] = {}
    try:
        index = _skip(text, 0)
        if text[index] != "{":
            return None
        index = _skip(text, index + 1)
        while text[index] != "}":
            if members:  # a comma before each member but the first
                if text[index] != ",":
                    return None
                index = _skip(text, index + 1)
            if text[index] != '"':
                return None
            key, index = _DECODER.raw_decode(text, index)
            index = _skip(text, index)
            if text[index] != ":":
                return None
            start = _skip(text, index + 1)
            members[key], index = _DECODER.raw_decode(text, start)  # a key twice: the last
            if index - start > _LARGE:
                pause()
            index = _skip(text, index)
    except (ValueError, IndexError, RecursionError):  # JSONDecodeError, or cut short
        return None
    return members if _skip(text, index + 1) == len(text) else None


def _refuse_constant(name: str) -> NoReturn:
    """NaN, Infinity and -Infinity: Python's json reads them, JSON.parse refuses them."""
    raise CorruptSessionError(f"not valid JSON ({name} is not a JSON value)")


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def _skip(text: str, index: int) -> int:
    """Past the whitespace at ``index`` (the pattern matches anywhere, if only nothing)."""
    return _SPACE.match(text, index).end()  # type: ignore[union-attr]


def _check_unknown(key: str, value: Any, depth: int) -> None:
    """Refuse what encode could not write back as it was: deep nesting, or an infinite number.

    ``depth`` counts the document as level 1. An integer too large for a double is one that
    JavaScript reads as Infinity, as a float literal such as 1e400 is read as inf here.
    """
    kind = type(value)
    if kind is float:
        if not math.isfinite(value):
            raise CorruptSessionError(f"{shown(key)} holds a number too large for JavaScript")
    elif kind is int:
        if _float(value) == math.inf:
            raise CorruptSessionError(f"{shown(key)} holds a number too large for JavaScript")
    elif kind is dict or kind is list:
        if depth > _MAX_DEPTH:
            raise CorruptSessionError(f"{shown(key)} is nested over {_MAX_DEPTH} levels deep")
        for item in value.values() if kind is dict else value:
            _check_unknown(key, item, depth + 1)


def _decode_section(
    document: dict[str, Any],
    section: str,
    decode_entry: Callable[[dict[str, Any]], _T],
    known: tuple[str, ...],
) -> tuple[Mapping[str, _T], Mapping[str, Mapping[str, Any]]]:
    """Each entry of a section, and the keys we do not know in the entries that have some."""
    if section not in document:
        return _NONE, _NONE
    decoded, extra = {}, {}
    for name, entry in _paced(_object(document, section).items()):
        try:
            if type(entry) is not dict:
                raise CorruptSessionError(f" should be an object, not {shown(entry)}")
            decoded[name] = decode_entry(entry)
            if any(key not in known for key in entry):
                extra[name] = _unknown(entry, known, 4)
        except CorruptSessionError as exc:  # named here, so the path every flush takes is lean
            raise CorruptSessionError(f"{section}[{shown(name)}]{exc}") from None
    return MappingProxyType(decoded), MappingProxyType(extra)


def _decode_calls(entry: dict[str, Any]) -> ToolStats:
    return ToolStats(
        _safe_integer(entry, "calls", "."),
        _safe_integer(entry, "errors", "."),
        _safe_integer(entry, "rateLimits", "."),
        _time(entry, "totalMs", "."),
        _time(entry, "maxMs", "."),
        _latency(entry["latency"]) if "latency" in entry else _NO_LATENCY,
    )


def _latency(latency: object) -> Mapping[int, int]:
    """Counts by bucket: keys are bucket numbers, as decimal strings; values, safe counts."""
    if type(latency) is not dict:
        raise CorruptSessionError(f".latency should be an object, not {shown(latency)}")
    buckets = {}
    for key in latency:
        if not (len(key) <= 3 and key.isascii() and key.isdigit() and str(int(key)) == key) or (
            int(key) >= BUCKETS
        ):
            raise CorruptSessionError(f".latency has no bucket {shown(key)}")
        buckets[int(key)] = _safe_integer(latency, key, ".latency.")
    return MappingProxyType(buckets)


def _decode_client(entry: dict[str, Any]) -> ClientStats:
    return ClientStats(
        _safe_integer(entry, "toolCalls", "."), _safe_integer(entry, "promptCalls", ".")
    )


def _safe_integer(members: dict[str, Any], key: str, where: str = "") -> int:
    """A count or version: an integer from 0 to MAX_COUNT, which JavaScript holds exactly."""
    value = members.get(key)
    if type(value) is int and 0 <= value <= MAX_COUNT:  # type(): true is no count
        return value
    if type(value) is not int:
        raise _refused(members, key, where, "an integer")
    raise CorruptSessionError(
        f"{where}{key} is negative ({shown(value)})"
        if value < 0
        else f"{where}{key} is above Number.MAX_SAFE_INTEGER (2**53 - 1)"
    )


def _time(members: dict[str, Any], key: str, where: str) -> float:
    """A time in milliseconds: a finite number, not negative; to the microsecond, as encode
    writes it, so that what decode reads is what it reads back of what encode writes."""
    value = members.get(key)
    if type(value) is float and 0.0 <= value <= _MAX_MS:  # also false for inf and NaN
        return round(value, 3)
    if type(value) is int and value >= 0 and _float(value) < math.inf:
        return float(value)
    if type(value) in (int, float):
        raise CorruptSessionError(f"{where}{key} is negative or too large ({shown(value)})")
    raise _refused(members, key, where, "a number")


def _string(members: dict[str, Any], key: str) -> str:
    value = members.get(key)
    if type(value) is not str:
        raise _refused(members, key, "", "a string")
    return value


def _object(members: dict[str, Any], key: str) -> dict[str, Any]:
    value = members.get(key)
    if type(value) is not dict:
        raise _refused(members, key, "", "an object")
    return value


def _refused(members: dict[str, Any], key: str, where: str, kind: str) -> CorruptSessionError:
    """The error for a member that is missing or not of the ``kind`` it should be."""
    if key not in members:
        return CorruptSessionError(f"{where}{key} is missing")
    return CorruptSessionError(f"{where}{key} should be {kind}, not {shown(members[key])}")


def _timestamp(members: dict[str, Any], key: str) -> datetime:
    text = _string(members, key)
    try:
        return parse_timestamp(text)
    except ValueError as exc:
        raise CorruptSessionError(f"{key}: {exc}") from None


def _float(number: float) -> float:
    """A JSON number as a float; one too large for a double (JavaScript's Infinity) is inf."""
    try:
        return float(number)
    except OverflowError:  # an integer of 400 digits
        return math.inf


class _EntryCodec(NamedTuple):
    """How the entries of one section are written and read."""

    section: str
    #: How an entry is written (``more``: the keys it has that we do not know).
    encode: Callable[[Any, str], str]
    #: What decode() reads back of what was written.
    canonical: Callable[[Any], Any]
    #: Whether an entry's line is that of what decode reads back (which then needs no encode).
    same_line: Callable[[Any], bool]
    #: How decode reads an entry, and the keys it knows.
    decode: Callable[[dict[str, Any]], Any]
    known: tuple[str, ...]


#: Each section's codec, in the order the sections are written.
_ENTRY_CODECS = (
    _EntryCodec("tools", _encode_calls, _decoded_calls, _floats, _decode_calls, _TOOL_KEYS),
    _EntryCodec("prompts", _encode_calls, _decoded_calls, _floats, _decode_calls, _TOOL_KEYS),
    _EntryCodec("clients", _encode_client, _decoded_client, _always, _decode_client, _CLIENT_KEYS),
)
