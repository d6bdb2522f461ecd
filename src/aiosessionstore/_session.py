"""The session and its stats, as the store hands them out, and the file's timestamps."""

from __future__ import annotations

import functools
import re
import reprlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

from . import _latency

__all__ = (
    "CURRENT_VERSION",
    "MAX_COUNT",
    "ClientStats",
    "Counts",
    "Record",
    "Session",
    "SessionStats",
    "ToolStats",
    "format_timestamp",
    "parse_timestamp",
    "shown",
    "timestamp",
)

CURRENT_VERSION = 1
#: Number.MAX_SAFE_INTEGER: JavaScript reads every number as a double, which holds no larger
#: integer exactly. A count in a file must not exceed it; encode writes no more than it.
MAX_COUNT = 2**53 - 1

#: ECMAScript's Date Time String Format (ECMA-262, "Date Time String Format") with a time and
#: a zone: what toISOString writes, and the one form every JavaScript engine reads alike.
_TIMESTAMP = re.compile(
    "([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:[.]([0-9]+))?)?"
    "(?:Z|([+-])([01][0-9]|2[0-3]):([0-5][0-9]))"
)
_TIMESTAMP_FORM = "YYYY-MM-DDTHH:mm:ss.sss with a time zone, Z or ±HH:mm"


def _empty() -> Mapping[Any, Any]:
    return MappingProxyType({})


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
    """Usage of one tool or prompt: calls, how many failed or were rate limited, and time.

    ``latency`` counts the calls by time, in the fixed buckets of ``_latency``, so that the
    percentiles below merge across processes; each is within 9.1 % of the true time.
    """

    calls: int = 0
    errors: int = 0
    rate_limits: int = 0
    total_ms: float = 0.0
    max_ms: float = 0.0
    #: Calls by latency bucket; stored as the entry's "latency" object.
    latency: Mapping[int, int] = field(default_factory=_empty)

    def __add__(self, other: ToolStats) -> ToolStats:
        return ToolStats(
            self.calls + other.calls,
            self.errors + other.errors,
            self.rate_limits + other.rate_limits,
            self.total_ms + other.total_ms,
            max(self.max_ms, other.max_ms),
            MappingProxyType(_latency.merge(self.latency, other.latency))
            if other.latency
            else self.latency,
        )

    def percentile(self, fraction: float) -> float | None:
        """The time in ms that ``fraction`` (0.5, 0.95, 0.99) of the timed calls took at most."""
        return _latency.percentile(self.latency, fraction, self.max_ms)

    @property
    def p50(self) -> float | None:
        return self.percentile(0.5)

    @property
    def p95(self) -> float | None:
        return self.percentile(0.95)

    @property
    def p99(self) -> float | None:
        return self.percentile(0.99)


@dataclass(frozen=True, slots=True)
class ClientStats:
    """The calls one MCP client made, by the name it gave in ``clientInfo``."""

    tool_calls: int = 0
    prompt_calls: int = 0

    def __add__(self, other: ClientStats) -> ClientStats:
        return ClientStats(
            self.tool_calls + other.tool_calls, self.prompt_calls + other.prompt_calls
        )


@dataclass(frozen=True, slots=True)
class Session:
    """One session: its id, when it began and was last active (UTC), its counters, and the
    calls per tool, per prompt and per client."""

    version: int
    session_id: str
    created_at: datetime
    last_active_at: datetime
    stats: SessionStats
    #: Per-tool stats, by tool name; stored under the file's top-level "tools" key.
    tools: Mapping[str, ToolStats] = field(default_factory=_empty)
    #: Per-prompt stats, by prompt name; under "prompts", shaped like "tools".
    prompts: Mapping[str, ToolStats] = field(default_factory=_empty)
    #: Calls per MCP client, by the client's name; under "clients".
    clients: Mapping[str, ClientStats] = field(default_factory=_empty)

    @classmethod
    def new(cls, now: datetime) -> Session:
        """A fresh session with a random id, created and last active at ``now``."""
        return cls(CURRENT_VERSION, str(uuid.uuid4()), now, now, SessionStats())

    def replaced(self, changes: Mapping[str, Any]) -> Session:
        """``dataclasses.replace(self, **changes)`` without its walk over the fields, which
        costs a flush some 5 µs (holding the GIL) each time."""
        if not changes.keys() <= _SESSION_FIELDS:
            return replace(self, **changes)  # which says what is wrong
        get = changes.get
        return Session(
            get("version", self.version),
            get("session_id", self.session_id),
            get("created_at", self.created_at),
            get("last_active_at", self.last_active_at),
            get("stats", self.stats),
            get("tools", self.tools),
            get("prompts", self.prompts),
            get("clients", self.clients),
        )


_SESSION_FIELDS = frozenset(each.name for each in fields(Session))


@dataclass(frozen=True, slots=True)
class Counts:
    """Counts made and not yet written: what one write adds to the session in the file."""

    stats: SessionStats = SessionStats()
    tools: Mapping[str, ToolStats] = field(default_factory=_empty)
    prompts: Mapping[str, ToolStats] = field(default_factory=_empty)
    clients: Mapping[str, ClientStats] = field(default_factory=_empty)


@dataclass(frozen=True, slots=True)
class Record:
    """A session as stored: the session plus the keys we do not know, kept as found.

    Those inside stats stay through a reset, which zeroes the counts we know; those of an
    entry in "tools", "prompts" or "clients" go with the entry. A new session is a new
    record, and keeps only the top-level ones.
    """

    session: Session
    #: Top-level keys.
    extra: Mapping[str, Any] = field(default_factory=_empty)
    #: Keys inside "stats".
    stats_extra: Mapping[str, Any] = field(default_factory=_empty)
    #: Keys inside the entries of "tools", "prompts" and "clients": by section, then name.
    entries_extra: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(default_factory=_empty)

    def with_session(self, **changes: Any) -> Record:
        session = self.session.replaced(changes)
        entries_extra = self.entries_extra
        if entries_extra:
            entries_extra = MappingProxyType(
                {
                    section: _kept(extra, getattr(session, section))
                    for section, extra in entries_extra.items()
                }
            )
        return Record(session, self.extra, self.stats_extra, entries_extra)


def _kept(
    extra: Mapping[str, Mapping[str, Any]], entries: Mapping[str, object]
) -> Mapping[str, Mapping[str, Any]]:
    """The unknown keys of the entries that are still there."""
    if all(name in entries for name in extra):
        return extra
    return MappingProxyType({name: keys for name, keys in extra.items() if name in entries})


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


# Pure, and given the same text again and again (a session's createdAt; each Redis delta's).
@functools.lru_cache(maxsize=1024)
def parse_timestamp(text: str) -> datetime:
    """Read ``YYYY-MM-DDTHH:mm[:ss[.sss]]`` and ``Z`` or ``±HH:mm``; UTC, to the millisecond.

    JavaScript's own format, read as ``Date`` reads it. ``fromisoformat`` is no judge: it
    reads more (week dates, ``08:00:00,5``) on each Python release, and Date reads none of it.
    """
    match = _TIMESTAMP.fullmatch(text)
    if match is None:
        raise ValueError(f"timestamp {shown(text)} is not a valid {_TIMESTAMP_FORM}")
    year, month, day, hour, minute, second = (int(match[group] or 0) for group in range(1, 7))
    milliseconds = int((match[7] or "").ljust(3, "0")[:3])  # as Date: three digits, no rounding
    try:
        moment = datetime(year, month, day, hour, minute, second, milliseconds * 1000, timezone.utc)
    except ValueError:  # February 30th, year 0, second 60, hour 24
        raise ValueError(f"timestamp {shown(text)} is not a valid {_TIMESTAMP_FORM}") from None
    if not match[8]:
        return moment
    offset = timedelta(hours=int(match[9]), minutes=int(match[10]))
    try:
        return moment - offset if match[8] == "+" else moment + offset
    except OverflowError:  # 0001-01-01T00:00+01:00 is a moment before year 1
        raise ValueError(f"timestamp {shown(text)} is outside years 1 to 9999 in UTC") from None


def shown(value: object) -> str:
    """A value for a message: short, and with any lone surrogate escaped, as repr does."""
    return reprlib.repr(value)
