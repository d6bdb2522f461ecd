"""The session, its stats, and their JSON form (the TypeScript tool's, both ways)."""

from __future__ import annotations

import codecs
import json
import math
import re
import reprlib
import sys
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any, NoReturn

from ._errors import CorruptSessionError, UnsupportedVersionError

__all__ = (
    "CURRENT_VERSION",
    "MAX_COUNT",
    "Record",
    "Session",
    "SessionStats",
    "ToolStats",
    "add_tools",
    "decode",
    "encode",
    "format_timestamp",
    "parse_timestamp",
    "timestamp",
)

CURRENT_VERSION = 1
#: Number.MAX_SAFE_INTEGER: JavaScript reads every number as a double, which holds no larger
#: integer exactly. A count in a file must not exceed it; encode writes no more than it.
MAX_COUNT = 2**53 - 1

#: JSON key of each counter, in field order of SessionStats.
_STAT_KEYS = ("toolCalls", "promptCalls", "errors", "rateLimits")
_TOOL_KEYS = ("calls", "errors", "rateLimits", "totalMs", "maxMs")
_KNOWN_KEYS = frozenset({"version", "sessionId", "createdAt", "lastActiveAt", "stats", "tools"})
#: Deepest nesting kept: json.dumps(indent=2) recurses in Python, so a deeper value adopted at
#: open would raise RecursionError at every flush after it.
_MAX_DEPTH = 64
_MAX_MS = sys.float_info.max
_SURROGATE = re.compile("[\ud800-\udfff]")
#: ECMAScript's Date Time String Format (ECMA-262, "Date Time String Format") with a time and
#: a zone: what toISOString writes, and the one form every JavaScript engine reads alike.
_TIMESTAMP = re.compile(
    "([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:[.]([0-9]+))?)?"
    "(?:Z|([+-])([01][0-9]|2[0-3]):([0-5][0-9]))"
)
_TIMESTAMP_FORM = "YYYY-MM-DDTHH:mm:ss.sss with a time zone, Z or ±HH:mm"
#: Indents of JSON.stringify(…, null, 2) at the top level, in stats, and in a tool's entry.
_AT_TOP, _IN_STATS, _IN_TOOL = " " * 2, " " * 4, " " * 6
#: Made once: json.dumps makes a new encoder for every call that is not all defaults.
_STRING = json.JSONEncoder(ensure_ascii=False).encode
_VALUE = json.JSONEncoder(ensure_ascii=False, allow_nan=False, indent=2).encode


@dataclass(frozen=True, slots=True)
class SessionStats:
    """Usage counters of one session."""

    tool_calls: int = 0
    prompt_calls: int = 0
    errors: int = 0
    rate_limits: int = 0

    def __add__(self, other: SessionStats) -> SessionStats:
        return SessionStats(
            self.tool_calls + other.tool_calls,
            self.prompt_calls + other.prompt_calls,
            self.errors + other.errors,
            self.rate_limits + other.rate_limits,
        )


@dataclass(frozen=True, slots=True)
class ToolStats:
    """Usage of one tool: calls, how many failed or were rate limited, and time spent."""

    calls: int = 0
    errors: int = 0
    rate_limits: int = 0
    total_ms: float = 0.0
    max_ms: float = 0.0

    def __add__(self, other: ToolStats) -> ToolStats:
        return ToolStats(
            self.calls + other.calls,
            self.errors + other.errors,
            self.rate_limits + other.rate_limits,
            self.total_ms + other.total_ms,
            max(self.max_ms, other.max_ms),
        )


def add_tools(
    tools: Mapping[str, ToolStats], more: Mapping[str, ToolStats]
) -> Mapping[str, ToolStats]:
    """Per-tool stats merged: counts and times added, the longest call kept."""
    if not more:
        return tools
    merged = dict(tools)
    for name, stats in more.items():
        merged[name] = merged[name] + stats if name in merged else stats
    return MappingProxyType(merged)


@dataclass(frozen=True, slots=True)
class Session:
    """One session: its id, when it began and was last active (UTC), its counters and tools."""

    version: int
    session_id: str
    created_at: datetime
    last_active_at: datetime
    stats: SessionStats
    #: Per-tool stats, by tool name; stored under the file's top-level "tools" key.
    tools: Mapping[str, ToolStats] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def new(cls, now: datetime) -> Session:
        """A fresh session with a random id, created and last active at ``now``."""
        return cls(CURRENT_VERSION, str(uuid.uuid4()), now, now, SessionStats())


@dataclass(frozen=True, slots=True)
class Record:
    """A session as stored: the session plus the keys we do not know, kept as found.

    Those inside stats stay through a reset, which zeroes the counts we know; those of a tool
    go with the tool. A new session is a new record, and keeps only the top-level ones.
    """

    session: Session
    #: Top-level keys.
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    #: Keys inside "stats".
    stats_extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    #: Keys inside a tool's entry in "tools", by tool name.
    tools_extra: Mapping[str, Mapping[str, Any]] = field(
        default_factory=lambda: MappingProxyType({})
    )

    def with_session(self, **changes: Any) -> Record:
        session = replace(self.session, **changes)
        tools_extra = self.tools_extra
        if tools_extra and "tools" in changes:
            kept = {name: extra for name, extra in tools_extra.items() if name in session.tools}
            tools_extra = MappingProxyType(kept)
        return replace(self, session=session, tools_extra=tools_extra)


def timestamp(seconds: float) -> datetime:
    """A UTC datetime at millisecond precision, as a JavaScript ``Date`` holds it."""
    milliseconds = int(seconds * 1000)
    return datetime.fromtimestamp(milliseconds / 1000, tz=timezone.utc)


def format_timestamp(moment: datetime) -> str:
    """JavaScript's ``Date.toISOString()`` form: ``2026-11-25T15:06:07.123Z``."""
    utc = moment.astimezone(timezone.utc)
    return (  # not strftime: its %Y does not pad years before 1000 on every platform
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T{utc.hour:02d}:{utc.minute:02d}:"
        f"{utc.second:02d}.{utc.microsecond // 1000:03d}Z"
    )


def parse_timestamp(text: str) -> datetime:
    """Read ``YYYY-MM-DDTHH:mm[:ss[.sss]]`` and ``Z`` or ``±HH:mm``; UTC, to the millisecond.

    JavaScript's own format, read as ``Date`` reads it. ``fromisoformat`` is no judge: it
    reads more (week dates, ``08:00:00,5``) on each Python release, and Date reads none of it.
    """
    match = _TIMESTAMP.fullmatch(text)
    if match is None:
        raise ValueError(f"timestamp {_shown(text)} is not a valid {_TIMESTAMP_FORM}")
    year, month, day, hour, minute, second = (int(match[group] or 0) for group in range(1, 7))
    milliseconds = int((match[7] or "").ljust(3, "0")[:3])  # as Date: three digits, no rounding
    try:
        moment = datetime(year, month, day, hour, minute, second, milliseconds * 1000, timezone.utc)
    except ValueError:  # February 30th, year 0, second 60, hour 24
        raise ValueError(f"timestamp {_shown(text)} is not a valid {_TIMESTAMP_FORM}") from None
    if not match[8]:
        return moment
    offset = timedelta(hours=int(match[9]), minutes=int(match[10]))
    try:
        return moment - offset if match[8] == "+" else moment + offset
    except OverflowError:  # 0001-01-01T00:00+01:00 is a moment before year 1
        raise ValueError(f"timestamp {_shown(text)} is outside years 1 to 9999 in UTC") from None


def encode(record: Record) -> bytes:
    """The file's bytes: the seed's ``JSON.stringify(session, null, 2)``, unknown keys kept.

    Written out by hand because ``json.dumps`` with ``indent`` falls back to its pure-Python
    encoder; this is the same text (a test holds it to that) in a third of the time, spent
    in a worker thread that holds the GIL while it runs. What it writes is strict JSON in
    UTF-8 that decode() accepts: a count above MAX_COUNT is written as MAX_COUNT, a time past
    the largest double as that double, and a lone surrogate as JSON.stringify's escape.
    """
    session = record.session
    stats = session.stats
    tool_calls, prompt_calls, errors, rate_limits = map(
        _count, (stats.tool_calls, stats.prompt_calls, stats.errors, stats.rate_limits)
    )
    text = (
        f'{{\n  "version": {session.version},\n'
        f'  "sessionId": {_STRING(session.session_id)},\n'
        f'  "createdAt": "{format_timestamp(session.created_at)}",\n'
        f'  "lastActiveAt": "{format_timestamp(session.last_active_at)}",\n'
        f'  "stats": {{\n    "toolCalls": {tool_calls},\n'
        f'    "promptCalls": {prompt_calls},\n    "errors": {errors},\n'
        f'    "rateLimits": {rate_limits}{_members(record.stats_extra, _IN_STATS)}\n  }}'
    )
    parts = [text]
    if session.tools:  # absent, not empty, so a session without tools is the seed's own
        more = record.tools_extra
        tools = ",\n".join(
            f"    {_STRING(name)}: "
            f"{_encode_tool(tool, _members(more[name], _IN_TOOL) if name in more else '')}"
            for name, tool in session.tools.items()
        )
        parts.append(f',\n  "tools": {{\n{tools}\n  }}')
    parts += [_members(record.extra, _AT_TOP), "\n}"]
    text = "".join(parts)
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate, which UTF-8 cannot hold
        return _SURROGATE.sub(_escape, text).encode()


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


def _encode_tool(tool: ToolStats, more: str) -> str:
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
        f'      "maxMs": {max_ms!r}{more}\n    }}'
    )


def decode(data: bytes) -> Record:
    """Parse and validate a session file; CorruptSessionError says what is wrong with it.

    It accepts what the TypeScript tool can read back as the same session: strict JSON
    (RFC 8259) in UTF-8, counts that are safe integers, finite times, and unknown values that
    are no deeper than 64 levels and hold no number that JavaScript would read as Infinity.
    """
    document = _parse(data)
    if type(document) is not dict:
        raise CorruptSessionError("not a JSON object")
    version = _safe_integer(document, "version")
    if version > CURRENT_VERSION:
        raise UnsupportedVersionError(
            f"session format version {version} is newer than version {CURRENT_VERSION}, "
            "the newest this aiosessionstore reads: upgrade aiosessionstore"
        )
    if version < 1:
        raise CorruptSessionError(f"version {version} is not a valid version")
    session_id = _string(document, "sessionId")
    if not session_id:
        raise CorruptSessionError("sessionId is empty")
    if _SURROGATE.search(session_id):  # it goes into logs and headers, which need UTF-8
        raise CorruptSessionError(f"sessionId is not valid Unicode: {_shown(session_id)}")
    stats = _object(document, "stats")
    tools, tools_extra = (
        _decode_tools(_object(document, "tools")) if "tools" in document else (_NONE, _NONE)
    )
    session = Session(
        version=CURRENT_VERSION,
        session_id=session_id,
        created_at=_timestamp(document, "createdAt"),
        last_active_at=_timestamp(document, "lastActiveAt"),
        stats=SessionStats(*(_safe_integer(stats, key, "stats.") for key in _STAT_KEYS)),
        tools=tools,
    )
    return Record(
        session,
        _unknown(document, _KNOWN_KEYS, 2),
        _unknown(stats, _STAT_KEYS, 3) if len(stats) > len(_STAT_KEYS) else _NONE,
        tools_extra,
    )


_NONE: Mapping[str, Any] = MappingProxyType({})


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
        return json.loads(data.decode(), parse_constant=_refuse_constant)
    except UnicodeDecodeError as exc:
        raise CorruptSessionError(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise CorruptSessionError("not valid JSON (nested too deep to parse)") from None
    except ValueError as exc:  # JSONDecodeError, or an integer of over 4300 digits
        raise CorruptSessionError(f"not valid JSON ({exc})") from None


def _refuse_constant(name: str) -> NoReturn:
    """NaN, Infinity and -Infinity: Python's json reads them, JSON.parse refuses them."""
    raise CorruptSessionError(f"not valid JSON ({name} is not a JSON value)")


def _check_unknown(key: str, value: Any, depth: int) -> None:
    """Refuse what encode could not write back as it was: deep nesting, or an infinite number.

    ``depth`` counts the document as level 1. An integer too large for a double is one that
    JavaScript reads as Infinity, as a float literal such as 1e400 is read as inf here.
    """
    kind = type(value)
    if kind is float:
        if not math.isfinite(value):
            raise CorruptSessionError(f"{_shown(key)} holds a number too large for JavaScript")
    elif kind is int:
        if _float(value) == math.inf:
            raise CorruptSessionError(f"{_shown(key)} holds a number too large for JavaScript")
    elif kind is dict or kind is list:
        if depth > _MAX_DEPTH:
            raise CorruptSessionError(f"{_shown(key)} is nested over {_MAX_DEPTH} levels deep")
        for item in value.values() if kind is dict else value:
            _check_unknown(key, item, depth + 1)


def _decode_tools(
    tools: dict[str, Any],
) -> tuple[Mapping[str, ToolStats], Mapping[str, Mapping[str, Any]]]:
    """Each tool's stats, and the keys we do not know in the entries that have some."""
    decoded, extra = {}, {}
    for name, tool in tools.items():
        try:
            decoded[name] = _decode_tool(tool)
            if len(tool) > len(_TOOL_KEYS):  # all of ours are there: something else is too
                extra[name] = _unknown(tool, _TOOL_KEYS, 4)
        except CorruptSessionError as exc:  # named here, so the path every flush takes is lean
            raise CorruptSessionError(f"tools[{_shown(name)}]{exc}") from None
    return MappingProxyType(decoded), MappingProxyType(extra)


def _decode_tool(tool: object) -> ToolStats:
    if type(tool) is not dict:
        raise CorruptSessionError(f" should be an object, not {_shown(tool)}")
    return ToolStats(
        _safe_integer(tool, "calls", "."),
        _safe_integer(tool, "errors", "."),
        _safe_integer(tool, "rateLimits", "."),
        _time(tool, "totalMs", "."),
        _time(tool, "maxMs", "."),
    )


def _safe_integer(members: dict[str, Any], key: str, where: str = "") -> int:
    """A count or version: an integer from 0 to MAX_COUNT, which JavaScript holds exactly."""
    value = members.get(key)
    if type(value) is int and 0 <= value <= MAX_COUNT:  # type(): true is no count
        return value
    if type(value) is not int:
        raise _refused(members, key, where, "an integer")
    raise CorruptSessionError(
        f"{where}{key} is negative ({_shown(value)})"
        if value < 0
        else f"{where}{key} is above Number.MAX_SAFE_INTEGER (2**53 - 1)"
    )


def _time(members: dict[str, Any], key: str, where: str) -> float:
    """A time in milliseconds: a finite number, not negative."""
    value = members.get(key)
    if type(value) is float and 0.0 <= value <= _MAX_MS:  # also false for inf and NaN
        return value
    if type(value) is int and value >= 0 and _float(value) < math.inf:
        return float(value)
    if type(value) in (int, float):
        raise CorruptSessionError(f"{where}{key} is negative or too large ({_shown(value)})")
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
    return CorruptSessionError(f"{where}{key} should be {kind}, not {_shown(members[key])}")


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


def _shown(value: object) -> str:
    """A value for a message: short, and with any lone surrogate escaped, as repr does."""
    return reprlib.repr(value)
