"""A merge as the Redis backend stores it in its list: the counts, and what to build on.

A delta is encoded with the session codec, so it is validated when read back: a record with
the counts, the session it starts where none is stored (``Change.base_when_missing``, made
once), and a ``"aiosessionstore:delta"`` key with that session's ``lastActiveAt`` and the cap
on names. Folding deltas applies them by ``Change.apply``, the one set of merge rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType

from ._change import Change, Mode
from ._codec import decode, encode_after
from ._errors import CorruptSessionError, UnsupportedVersionError
from ._names import check_max_tools
from ._session import (
    CURRENT_VERSION,
    Counts,
    Record,
    Session,
    SessionStats,
    format_timestamp,
    parse_timestamp,
)

__all__ = ("DELTA_KEY", "Delta", "fold", "make_delta", "read_delta")

#: The top-level key that makes a record a delta; no session has it.
DELTA_KEY = "aiosessionstore:delta"


@dataclass(frozen=True)
class Delta:
    """One merge as stored in the list: the session it starts where none is stored, and the
    change that adds its counts (its writer's cap on names included)."""

    base: Record
    change: Change

    def onto(self, record: Record | None) -> Record:
        return self.change.apply(self.base if record is None else record)


def fold(record: Record | None, deltas: Sequence[Delta]) -> Record | None:
    """``record`` (None: no session stored) with ``deltas`` merged in, in order."""
    for delta in deltas:
        record = delta.onto(record)
    return record


def make_delta(change: Change, where: str) -> tuple[bytes, Delta] | None:
    """A merge as a delta's bytes, and what every reader reads back from them; None for a
    merge that a delta cannot carry (it is written by compare-and-set instead)."""
    if change.known is None:
        return None
    base = change.base_when_missing(where)
    session = base.session
    if (
        base.stats_extra
        or base.entries_extra
        or DELTA_KEY in base.extra
        or session.version != CURRENT_VERSION
        or session.stats != SessionStats()
        or session.tools
        or session.prompts
        or session.clients
    ):
        return None
    counts = change.counts
    record = Record(
        Session(
            CURRENT_VERSION,
            session.session_id,
            session.created_at,
            change.active_at,
            counts.stats,
            counts.tools,
            counts.prompts,
            counts.clients,
        ),
        MappingProxyType(
            {
                **base.extra,
                DELTA_KEY: {
                    "lastActiveAt": format_timestamp(session.last_active_at),
                    "maxTools": change.max_tools,
                },
            }
        ),
    )
    # What every reader decodes from these bytes, foreseen without parsing them.
    data, encoded = encode_after(record, None)
    try:
        delta = read_delta(data) if encoded is None else _delta_of(encoded.record)
    except (CorruptSessionError, UnsupportedVersionError, RecursionError):
        return None  # an id or a key that does not read back as written
    return data, delta


def read_delta(data: bytes) -> Delta:
    """The delta in ``data``; CorruptSessionError if it is none."""
    return _delta_of(decode(data))


def _delta_of(record: Record) -> Delta:
    """The delta a record decoded from a list entry says; CorruptSessionError if none."""
    mark = record.extra.get(DELTA_KEY)
    if not isinstance(mark, dict) or set(mark) != {"lastActiveAt", "maxTools"}:
        raise CorruptSessionError(f"no {DELTA_KEY} object with lastActiveAt and maxTools")
    try:
        base_active = parse_timestamp(mark["lastActiveAt"])
        max_tools = check_max_tools(mark["maxTools"])
    except (TypeError, ValueError) as exc:
        raise CorruptSessionError(f"{DELTA_KEY}: {exc}") from None
    if record.stats_extra or record.entries_extra:
        raise CorruptSessionError("a delta has no unknown keys in its stats or entries")
    session = record.session
    extra = {key: value for key, value in record.extra.items() if key != DELTA_KEY}
    base = Record(
        Session(
            session.version,
            session.session_id,
            session.created_at,
            base_active,
            SessionStats(),
        ),
        MappingProxyType(extra),
    )
    counts = Counts(session.stats, session.tools, session.prompts, session.clients)
    change = Change(Mode.MERGE, counts, session.last_active_at, None, False, max_tools)
    return Delta(base, change)
