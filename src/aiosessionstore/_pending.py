"""The counts a store has made but not yet written: the one mutable thing it owns."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, ItemsView, Iterator, Mapping, ValuesView
from datetime import datetime
from math import ceil, inf, log2
from types import MappingProxyType
from typing import Any, NamedTuple, TypeVar

from ._latency import LAST_BUCKET, PER_DOUBLING
from ._names import OTHER
from ._session import ClientStats, Counts, SessionStats, ToolStats, timestamp

__all__ = (
    "ERRORS",
    "PROMPT_CALLS",
    "RATE_LIMITS",
    "TOOL_CALLS",
    "Calls",
    "Pending",
    "Taken",
    "moment",
)

logger = logging.getLogger("aiosessionstore")

#: Indexes into Pending.counts, in the order of SessionStats' fields.
TOOL_CALLS, PROMPT_CALLS, ERRORS, RATE_LIMITS = range(4)

_NOTHING = Counts()

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
    """Pending counts moved out for one write, and when the last of them was made."""

    counts: Counts
    active_at: float | None


class Calls:
    """The pending calls of one tool or prompt; slots are the cheapest thing to add to."""

    __slots__ = ("calls", "errors", "latency", "max_ms", "rate_limits", "total_ms")

    def __init__(self) -> None:
        self.calls = self.errors = self.rate_limits = 0
        self.total_ms = self.max_ms = 0.0
        self.latency: dict[int, int] = {}

    def timed(self, elapsed_ms: float) -> None:
        self.total_ms += elapsed_ms
        if elapsed_ms > self.max_ms:
            self.max_ms = elapsed_ms
        # bucket(elapsed_ms), spelled out: a call fewer on every tool call (tests hold the two
        # to the format's definition)
        microseconds = elapsed_ms * 1000
        if not microseconds > 1:  # also NaN
            index = 0
        elif microseconds == inf:
            index = LAST_BUCKET
        else:
            index = ceil(PER_DOUBLING * log2(microseconds))
            if index > LAST_BUCKET:
                index = LAST_BUCKET
        latency = self.latency
        latency[index] = latency.get(index, 0) + 1

    def add(self, more: ToolStats) -> None:
        self.calls += more.calls
        self.errors += more.errors
        self.rate_limits += more.rate_limits
        self.total_ms += more.total_ms
        self.max_ms = max(self.max_ms, more.max_ms)
        for index, count in more.latency.items():
            self.latency[index] = self.latency.get(index, 0) + count

    def stats(self) -> ToolStats:
        latency = MappingProxyType(dict(self.latency))
        return ToolStats(
            self.calls, self.errors, self.rate_limits, self.total_ms, self.max_ms, latency
        )


class Pending:
    """Counts since the last write, and when the last one was made (None: nothing pending)."""

    __slots__ = ("active_at", "clients", "counts", "max_tools", "prompts", "tools")

    def __init__(self, max_tools: int) -> None:
        #: How many distinct names to keep apart; the calls of further ones go to OTHER.
        self.max_tools = max_tools
        self.active_at: float | None = None
        self.clear()

    def clear(self) -> None:
        #: A list of four ints is the cheapest thing to add to on the hot path.
        self.counts = [0, 0, 0, 0]
        self.tools: dict[str, Calls] = {}
        self.prompts: dict[str, Calls] = {}
        #: Per client: [tool calls, prompt calls].
        self.clients: dict[str, list[int]] = {}
        self.active_at = None

    def calls(self, entries: dict[str, Calls], name: str, keep: bool = False) -> Calls:
        """The pending calls of one tool or prompt, made on first use; past the cap, OTHER's,
        unless ``keep``: a name the session already keeps stays itself."""
        calls = entries.get(name)
        if calls is None:
            full = len(entries) - (OTHER in entries) >= self.max_tools
            if full and not keep and name != OTHER:
                return self.calls(entries, OTHER)
            calls = entries[name] = Calls()
        return calls

    def client(self, name: str) -> list[int]:
        """The pending [tool calls, prompt calls] of one client; past the cap, OTHER's."""
        client = self.clients.get(name)
        if client is None:
            if len(self.clients) - (OTHER in self.clients) >= self.max_tools:
                name = OTHER
                client = self.clients.get(name)
            if client is None:
                client = self.clients[name] = [0, 0]
        return client

    def snapshot(self) -> Counts:
        """The pending counts as they stand, left pending."""
        if self.active_at is None:
            return _NOTHING
        return Counts(
            SessionStats(*self.counts),
            MappingProxyType({name: calls.stats() for name, calls in self.tools.items()}),
            MappingProxyType({name: calls.stats() for name, calls in self.prompts.items()}),
            MappingProxyType({name: ClientStats(*c) for name, c in self.clients.items()}),
        )

    def add(self, counts: Counts, active_at: float | None) -> None:
        """Add counts: new ones, or ones a failed write gives back."""
        mine = self.counts
        stats = counts.stats
        mine[TOOL_CALLS] += stats.tool_calls
        mine[PROMPT_CALLS] += stats.prompt_calls
        mine[ERRORS] += stats.errors
        mine[RATE_LIMITS] += stats.rate_limits
        for entries, more in ((self.tools, counts.tools), (self.prompts, counts.prompts)):
            for name, stats_of_one in more.items():
                self.calls(entries, name).add(stats_of_one)
        for name, client in counts.clients.items():
            pending = self.client(name)
            pending[0] += client.tool_calls
            pending[1] += client.prompt_calls
        if active_at is not None and (self.active_at is None or active_at > self.active_at):
            self.active_at = active_at

    def take(self) -> Taken:
        """Move the pending counts out, for a write to store (or, for a reset, to drop).

        O(1) on the loop's thread, however many names are pending: the dicts themselves are
        handed over (and fresh ones made for what comes next), to be turned into stats where
        they are first read, on the store's thread.
        """
        if self.active_at is None:
            taken = Taken(_NOTHING, None)
        else:
            taken = Taken(
                Counts(
                    SessionStats(*self.counts),
                    Handed(self.tools, Calls.stats),
                    Handed(self.prompts, Calls.stats),
                    Handed(self.clients, _client_stats),
                ),
                self.active_at,
            )
        self.clear()
        return taken

    def give_back(self, taken: Taken) -> None:
        self.add(taken.counts, taken.active_at)

    def __str__(self) -> str:
        return describe(SessionStats(*self.counts))


def _client_stats(client: list[int]) -> ClientStats:
    return ClientStats(*client)


_V = TypeVar("_V")


class Handed(Mapping[str, _V]):
    """Pending entries handed over to a write, made into stats when first read.

    Nothing mutates ``raw`` once it is handed over (the pending side has fresh dicts), so
    reading it from either thread gives the same stats; two threads that read it at once
    each convert it, and one of the equal results is kept.
    """

    __slots__ = ("_convert", "_converted", "_raw")

    def __init__(self, raw: dict[str, Any], convert: Callable[[Any], _V]) -> None:
        self._raw = raw
        self._convert = convert
        self._converted: Mapping[str, _V] | None = None

    def _stats(self) -> Mapping[str, _V]:
        converted = self._converted
        if converted is None:
            convert = self._convert
            converted = MappingProxyType({name: convert(v) for name, v in self._raw.items()})
            self._converted = converted
        return converted

    def __getitem__(self, name: str) -> _V:
        return self._stats()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __contains__(self, name: object) -> bool:
        return name in self._raw

    def items(self) -> ItemsView[str, _V]:
        return self._stats().items()

    def values(self) -> ValuesView[_V]:
        return self._stats().values()

    def __repr__(self) -> str:
        return repr(dict(self._stats()))


def describe(stats: SessionStats) -> str:
    """Counts as a log line names them."""
    return (
        f"{stats.tool_calls} tool calls, {stats.prompt_calls} prompt calls, "
        f"{stats.errors} errors, {stats.rate_limits} rate limits"
    )
