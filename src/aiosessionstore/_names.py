"""Names of tools, prompts and clients: which ones are accepted, and how many are kept apart.

A name becomes a key of the file, so a bad one would poison every later write, and an
unbounded number of them would grow the file, the memory and every flush without end. Names
are checked where they come in; past the cap, calls are counted under one entry, ``OTHER``,
so that the session's own counters and the per-name sums always stay exact.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Protocol, TypeVar

from ._session import Counts, Session

__all__ = (
    "DEFAULT_MAX_TOOLS",
    "MAX_NAME_LENGTH",
    "OTHER",
    "UNKNOWN",
    "add_counts",
    "check_max_tools",
    "check_name",
    "client_name",
    "copied",
    "merge_capped",
)

#: Where the calls of names past the cap are counted. Names in parentheses are reserved.
OTHER = "(other)"
#: Where calls of tools or prompts that do not exist are counted, and those of clients that
#: gave no usable name: a client must not be able to grow the file by naming things.
UNKNOWN = "(unknown)"
DEFAULT_MAX_TOOLS = 1000
#: The most a store accepts. At 1,000 names of each kind, the very worst session (names of
#: 128 four-byte characters, all 160 latency buckets used, every count at its maximum) is
#: about 12.5 MB: under the 16 MiB the store agrees to read, so it can always be written.
_LIMIT_MAX_TOOLS = 1000
#: As the MCP specification advises for tool names.
MAX_NAME_LENGTH = 128
#: Control characters (C0, DEL, C1) and lone surrogates, which UTF-8 cannot encode.
_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
#: Names (exact ``str``s) that passed ``check_name``, so that a name used again, as every
#: tool's is on each call, costs a set lookup; bounded, so new names cannot grow it.
_PASSED: set[str] = set()
_PASSED_MAX = 4 * _LIMIT_MAX_TOOLS


class _Addable(Protocol):
    def __add__(self, other: Any, /) -> Any: ...


_Stats = TypeVar("_Stats", bound=_Addable)
_T = TypeVar("_T")


def check_name(name: object, what: str = "tool") -> str:
    """``name`` if a file can keep it as a name; else a ValueError that says why."""
    if type(name) is str and name in _PASSED:
        return name
    if not isinstance(name, str):
        raise TypeError(f"a {what} name must be a str, not {type(name).__name__}")
    if not 0 < len(name) <= MAX_NAME_LENGTH:
        raise ValueError(
            f"a {what} name must have 1 to {MAX_NAME_LENGTH} characters, not {len(name)}"
        )
    if _FORBIDDEN.search(name):
        raise ValueError(f"a {what} name must not hold control characters or surrogates: {name!r}")
    if name.startswith("(") and name.endswith(")") and name != UNKNOWN:
        raise ValueError(f"{what} names in parentheses are reserved: {name!r}")
    if type(name) is str and len(_PASSED) < _PASSED_MAX:
        _PASSED.add(name)
    return name


def client_name(name: object) -> str:
    """A client's own name for itself, or UNKNOWN: it comes from the wire, so never raises."""
    try:
        return check_name(name, "client")
    except (TypeError, ValueError):
        return UNKNOWN


def check_max_tools(max_tools: object) -> int:
    if isinstance(max_tools, bool) or not isinstance(max_tools, int):
        raise TypeError(f"max_tools must be an int, not {type(max_tools).__name__}")
    if not 0 < max_tools <= _LIMIT_MAX_TOOLS:
        raise ValueError(f"max_tools must be from 1 to {_LIMIT_MAX_TOOLS}, got {max_tools}")
    return max_tools


def merge_capped(
    entries: Mapping[str, _Stats], more: Mapping[str, _Stats], cap: int
) -> Mapping[str, _Stats]:
    """Entries merged by adding their stats; a name that would take them past ``cap``
    distinct names is merged into ``OTHER``."""
    if not more:
        return entries
    merged = copied(entries)
    named = len(merged) - (OTHER in merged)
    for name, stats in more.items():
        if name not in merged and name != OTHER:
            if named >= cap:
                name = OTHER
            else:
                named += 1
        merged[name] = merged[name] + stats if name in merged else stats
    return MappingProxyType(merged)


def copied(entries: Mapping[str, _T]) -> dict[str, _T]:
    """A new dict of ``entries``. A session's entries are a proxy of a dict: its copy() is
    the dict's, made in one go, where dict() of the proxy copies it key by key (15 times
    slower: 60 µs at 1,000 names, holding the GIL)."""
    if type(entries) is MappingProxyType:
        copied = entries.copy()
        if type(copied) is dict:
            return copied
    return dict(entries)


def add_counts(session: Session, counts: Counts, cap: int) -> dict[str, Any]:
    """The fields of ``session`` with ``counts`` added, for ``dataclasses.replace``."""
    return {
        "stats": session.stats + counts.stats,
        "tools": merge_capped(session.tools, counts.tools, cap),
        "prompts": merge_capped(session.prompts, counts.prompts, cap),
        "clients": merge_capped(session.clients, counts.clients, cap),
    }
