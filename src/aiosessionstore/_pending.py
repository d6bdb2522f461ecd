"""The counts a store has made but not yet written: the one mutable thing it owns."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType
from typing import NamedTuple

from ._file import Change, Mode
from ._names import OTHER
from ._session import Record, SessionStats, ToolStats, timestamp

__all__ = (
    "CALLS",
    "ERRORS",
    "MAX_MS",
    "PROMPT_CALLS",
    "RATE_LIMITS",
    "TOOL_CALLS",
    "TOOL_ERRORS",
    "TOOL_RATE_LIMITS",
    "TOTAL_MS",
    "Pending",
    "Taken",
    "moment",
)

logger = logging.getLogger("aiosessionstore")

#: Indexes into Pending.counts, in the order of SessionStats' fields.
TOOL_CALLS, PROMPT_CALLS, ERRORS, RATE_LIMITS = range(4)
#: Indexes into one tool's list in Pending.tools, in the order of ToolStats' fields.
CALLS, TOOL_ERRORS, TOOL_RATE_LIMITS, TOTAL_MS, MAX_MS = range(5)

_NO_TOOLS: Mapping[str, ToolStats] = MappingProxyType({})

#: 9999-12-31T23:59:59.999Z: the last moment that both ``datetime`` and the file can hold.
_LATEST = 253_402_300_799.999


def moment(reading: float, fallback: datetime) -> datetime:
    """A clock reading as a timestamp, or ``fallback`` for one that no file can hold.

    A clock that returns NaN, an infinity or a time past the year 9999 must not cost the
    counts taken with it, so the bad reading is logged and replaced, never raised.
    """
    try:
        if math.isfinite(reading) and 0 <= reading <= _LATEST:
            return timestamp(reading)
    except (TypeError, ValueError, OverflowError):
        pass
    logger.warning(
        "the clock returned %r, which is no time a session can hold; using %s", reading, fallback
    )
    return fallback


class Taken(NamedTuple):
    """Pending counts moved out for one transaction, to give back if it fails."""

    change: Change
    stats: SessionStats
    tools: Mapping[str, ToolStats]
    active_at: float | None


class Pending:
    """Counts since the last write, and when the last one was made (None: nothing pending)."""

    __slots__ = ("active_at", "counts", "max_tools", "tools")

    def __init__(self, max_tools: int) -> None:
        #: How many distinct tool names to keep apart; the calls of further ones go to OTHER.
        self.max_tools = max_tools
        #: A list of four ints is the cheapest thing to add to on the hot path.
        self.counts = [0, 0, 0, 0]
        #: Per tool: [calls, errors, rate limits, total ms, max ms].
        self.tools: dict[str, list[float]] = {}
        self.active_at: float | None = None

    def stats(self) -> SessionStats:
        return SessionStats(*self.counts)

    def tool_stats(self) -> Mapping[str, ToolStats]:
        if not self.tools:
            return _NO_TOOLS
        return MappingProxyType(
            {
                name: ToolStats(int(calls), int(errors), int(limits), total_ms, max_ms)
                for name, (calls, errors, limits, total_ms, max_ms) in self.tools.items()
            }
        )

    def tool(self, name: str) -> list[float]:
        """The pending list of one tool, made on first use; past the cap, OTHER's."""
        tool = self.tools.get(name)
        if tool is None:
            if len(self.tools) - (OTHER in self.tools) >= self.max_tools:
                name = OTHER
                tool = self.tools.get(name)
            if tool is None:
                tool = self.tools[name] = [0, 0, 0, 0.0, 0.0]
        return tool

    def add(
        self, stats: SessionStats, tools: Mapping[str, ToolStats], active_at: float | None
    ) -> None:
        """Add counts: new ones, or ones a failed write gives back."""
        counts = self.counts
        counts[TOOL_CALLS] += stats.tool_calls
        counts[PROMPT_CALLS] += stats.prompt_calls
        counts[ERRORS] += stats.errors
        counts[RATE_LIMITS] += stats.rate_limits
        for name, more in tools.items():
            tool = self.tool(name)
            tool[CALLS] += more.calls
            tool[TOOL_ERRORS] += more.errors
            tool[TOOL_RATE_LIMITS] += more.rate_limits
            tool[TOTAL_MS] += more.total_ms
            tool[MAX_MS] = max(tool[MAX_MS], more.max_ms)
        if active_at is not None and (self.active_at is None or active_at > self.active_at):
            self.active_at = active_at

    def take(self, mode: Mode, known: Record, saved: bool, now: float) -> Taken | None:
        """Empty the counts into the Change that writes them (or, for a reset, drops them).

        None for a merge with nothing pending: such a flush writes nothing.
        """
        taken_at = self.active_at
        if mode is not Mode.MERGE:
            reading = now
        elif taken_at is None:
            return None
        else:
            reading = taken_at
        # All that can fail comes before clear(): the counts stay here until they are taken.
        when = moment(reading, known.session.last_active_at)
        stats, tools = self.stats(), self.tool_stats()
        if mode is Mode.MERGE:
            change = Change(mode, stats, tools, when, known, saved, self.max_tools)
        else:
            change = Change(mode, SessionStats(), _NO_TOOLS, when, known, saved, self.max_tools)
        self.clear()
        return Taken(change, stats, tools, taken_at)

    def give_back(self, taken: Taken) -> None:
        self.add(taken.stats, taken.tools, taken.active_at)

    def clear(self) -> None:
        self.counts = [0, 0, 0, 0]
        self.tools = {}
        self.active_at = None

    def __str__(self) -> str:
        tool_calls, prompt_calls, errors, rate_limits = self.counts
        return (
            f"{tool_calls} tool calls, {prompt_calls} prompt calls, "
            f"{errors} errors, {rate_limits} rate limits"
        )
