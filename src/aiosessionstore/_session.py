"""The session, its stats, and their JSON form (the TypeScript tool's, both ways)."""

from __future__ import annotations

import codecs
import json
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any

from ._errors import CorruptSessionError, UnsupportedVersionError

__all__ = (
    "CURRENT_VERSION",
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

#: JSON key of each counter, in field order of SessionStats.
_STAT_KEYS = ("toolCalls", "promptCalls", "errors", "rateLimits")
_TOOL_KEYS = ("calls", "errors", "rateLimits", "totalMs", "maxMs")
_KNOWN_KEYS = frozenset({"version", "sessionId", "createdAt", "lastActiveAt", "stats", "tools"})
#: Deepest nesting kept: json.dumps(indent=2) recurses in Python, so a deeper value adopted at
#: open would raise RecursionError at every flush after it.
_MAX_DEPTH = 64
_SURROGATE = re.compile("[\ud800-\udfff]")


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
    """A session as stored: the session plus the top-level keys we do not know, kept as found."""

    session: Session
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def with_session(self, **changes: Any) -> Record:
        return Record(replace(self.session, **changes), self.extra)


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
    """Read an ISO 8601 timestamp that names its offset (``Z`` or ``+hh:mm``); UTC result."""
    moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    if moment.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no time zone")
    try:
        return moment.astimezone(timezone.utc)
    except OverflowError:  # 0001-01-01T00:00+01:00 is a moment before year 1
        raise ValueError(f"timestamp {text!r} is outside years 1 to 9999 in UTC") from None


def encode(record: Record) -> bytes:
    """The file's bytes: the seed's ``JSON.stringify(session, null, 2)``, unknown keys kept.

    Written out by hand because ``json.dumps`` with ``indent`` falls back to its pure-Python
    encoder; this is the same text (a test holds it to that) in a third of the time, spent
    in a worker thread that holds the GIL while it runs.
    """
    session = record.session
    stats = session.stats
    text = (
        f'{{\n  "version": {session.version},\n'
        f'  "sessionId": {_string(session.session_id)},\n'
        f'  "createdAt": "{format_timestamp(session.created_at)}",\n'
        f'  "lastActiveAt": "{format_timestamp(session.last_active_at)}",\n'
        f'  "stats": {{\n    "toolCalls": {stats.tool_calls},\n'
        f'    "promptCalls": {stats.prompt_calls},\n    "errors": {stats.errors},\n'
        f'    "rateLimits": {stats.rate_limits}\n  }}'
    )
    parts = [text]
    if session.tools:  # absent, not empty, so a session without tools is the seed's own
        tools = ",\n".join(
            f"    {_string(name)}: {_encode_tool(tool)}" for name, tool in session.tools.items()
        )
        parts.append(f',\n  "tools": {{\n{tools}\n  }}')
    for key, value in record.extra.items():
        nested = json.dumps(value, indent=2, ensure_ascii=False).replace("\n", "\n  ")
        parts.append(f",\n  {_string(key)}: {nested}")
    parts.append("\n}")
    text = "".join(parts)
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate, which UTF-8 cannot hold
        return _SURROGATE.sub(_escape, text).encode()


def _escape(match: re.Match[str]) -> str:
    """A lone surrogate as JSON.stringify writes it: an escape, in a string it can only be in."""
    return f"\\u{ord(match[0]):04x}"


def _string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _encode_tool(tool: ToolStats) -> str:
    total_ms, max_ms = round(tool.total_ms, 3), round(tool.max_ms, 3)  # µs are plenty
    return (
        f'{{\n      "calls": {tool.calls},\n      "errors": {tool.errors},\n'
        f'      "rateLimits": {tool.rate_limits},\n      "totalMs": {total_ms!r},\n'
        f'      "maxMs": {max_ms!r}\n    }}'
    )


def decode(data: bytes) -> Record:
    """Parse and validate a session file; CorruptSessionError says what is wrong with it."""
    document = _parse(data)
    if not isinstance(document, dict):
        raise CorruptSessionError("not a JSON object")
    version = _field(document, "version", int)
    if version > CURRENT_VERSION:
        raise UnsupportedVersionError(
            f"session format version {version} is newer than version {CURRENT_VERSION}, "
            "the newest this aiosessionstore reads: upgrade aiosessionstore"
        )
    if version < 1:
        raise CorruptSessionError(f"version {version} is not a valid version")
    session_id = _field(document, "sessionId", str)
    if not session_id:
        raise CorruptSessionError("sessionId is empty")
    if _SURROGATE.search(session_id):  # it goes into logs and headers, which need UTF-8
        raise CorruptSessionError(f"sessionId is not valid Unicode: {session_id!r}")
    session = Session(
        version=CURRENT_VERSION,
        session_id=session_id,
        created_at=_timestamp_field(document, "createdAt"),
        last_active_at=_timestamp_field(document, "lastActiveAt"),
        stats=_decode_stats(_field(document, "stats", dict)),
        tools=_decode_tools(document["tools"]) if "tools" in document else MappingProxyType({}),
    )
    extra = {key: value for key, value in document.items() if key not in _KNOWN_KEYS}
    for key, value in extra.items():
        _check_depth(key, value, 2)
    return Record(session, MappingProxyType(extra))


def _parse(data: bytes) -> Any:
    """The JSON document in UTF-8 bytes (RFC 8259), any error of the parser made corrupt."""
    if data.startswith(codecs.BOM_UTF8):  # RFC 8259 lets a parser ignore it; we write none
        data = data[len(codecs.BOM_UTF8) :]
    try:
        # Decoded here: json.loads(bytes) lets UTF-8-encoded surrogates through.
        return json.loads(data.decode())
    except UnicodeDecodeError as exc:
        raise CorruptSessionError(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise CorruptSessionError("not valid JSON (nested too deep to parse)") from None
    except ValueError as exc:  # JSONDecodeError, or an integer of over 4300 digits
        raise CorruptSessionError(f"not valid JSON ({exc})") from None


def _check_depth(key: str, value: Any, depth: int) -> None:
    """Refuse an unknown value nested deeper than _MAX_DEPTH levels, counting the document."""
    if depth > _MAX_DEPTH:
        raise CorruptSessionError(f"{key!r} is nested more than {_MAX_DEPTH} levels deep")
    if isinstance(value, dict):
        for item in value.values():
            _check_depth(key, item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_depth(key, item, depth + 1)


def _decode_stats(stats: dict[str, Any]) -> SessionStats:
    counts = [_field(stats, key, int) for key in _STAT_KEYS]
    for key, count in zip(_STAT_KEYS, counts, strict=True):
        if count < 0:
            raise CorruptSessionError(f"stats.{key} is negative ({count})")
    return SessionStats(*counts)


def _decode_tools(tools: object) -> Mapping[str, ToolStats]:
    if not isinstance(tools, dict):
        raise CorruptSessionError(f"tools should be an object, not {tools!r}")
    decoded = {}
    for name, tool in tools.items():
        if not isinstance(tool, dict):
            raise CorruptSessionError(f"tools[{name!r}] should be an object, not {tool!r}")
        calls, errors, rate_limits = (_field(tool, key, int) for key in _TOOL_KEYS[:3])
        total_ms, max_ms = (_float(_field(tool, key, float)) for key in _TOOL_KEYS[3:])
        if min(calls, errors, rate_limits, total_ms, max_ms) < 0 or not all(
            math.isfinite(ms) for ms in (total_ms, max_ms)
        ):
            raise CorruptSessionError(f"tools[{name!r}] has a negative count or a bad time")
        decoded[name] = ToolStats(calls, errors, rate_limits, total_ms, max_ms)
    return MappingProxyType(decoded)


def _float(number: float) -> float:
    """A JSON number as a float; one too large for a double (JavaScript's Infinity) is inf."""
    try:
        return float(number)
    except OverflowError:  # an integer of 400 digits
        return math.inf


def _timestamp_field(document: dict[str, Any], key: str) -> datetime:
    text = _field(document, key, str)
    try:
        return parse_timestamp(text)
    except ValueError:
        raise CorruptSessionError(f"{key} is not an ISO 8601 timestamp: {text!r}") from None


def _field(document: dict[str, Any], key: str, kind: type[Any]) -> Any:
    if key not in document:
        raise CorruptSessionError(f"{key} is missing")
    value = document[key]
    accepted = (int, float) if kind is float else kind  # a JSON number: 12 or 12.5
    # bool is an int to Python but not to JSON: true is no counter.
    if not isinstance(value, accepted) or isinstance(value, bool):
        raise CorruptSessionError(f"{key} should be {_JSON_TYPES[kind]}, not {value!r}")
    return value


_JSON_TYPES: dict[type[Any], str] = {
    int: "an integer",
    float: "a number",
    str: "a string",
    dict: "an object",
}
