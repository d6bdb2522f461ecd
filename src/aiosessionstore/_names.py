"""Tool names: which ones a store accepts, and how many distinct ones a session keeps.

A name becomes a key of the file's ``"tools"`` object, so a bad one would poison every later
write, and an unbounded number of them would grow the file, the memory and every flush
without end. Names are checked where they come in; past the cap, calls are counted under
one entry, ``OTHER``, so that the session's own counters always stay exact.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

from ._session import ToolStats

__all__ = ("DEFAULT_MAX_TOOLS", "MAX_NAME_LENGTH", "OTHER", "check_max_tools", "check_name",
           "merge_tools")  # fmt: skip

#: Where the calls of tools past the cap are counted. Names in parentheses are reserved.
OTHER = "(other)"
DEFAULT_MAX_TOOLS = 1000
#: The most a store accepts: well under the size of file the store agrees to read.
_LIMIT_MAX_TOOLS = 10_000
#: As the MCP specification advises for tool names.
MAX_NAME_LENGTH = 128
#: Control characters (C0, DEL, C1) and lone surrogates, which UTF-8 cannot encode.
_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def check_name(name: object) -> str:
    """``name`` if a file can keep it as a tool name; else a ValueError that says why."""
    if not isinstance(name, str):
        raise TypeError(f"a tool name must be a str, not {type(name).__name__}")
    if not 0 < len(name) <= MAX_NAME_LENGTH:
        raise ValueError(
            f"a tool name must have 1 to {MAX_NAME_LENGTH} characters, not {len(name)}"
        )
    if _FORBIDDEN.search(name):
        raise ValueError(f"a tool name must not hold control characters or surrogates: {name!r}")
    if name.startswith("(") and name.endswith(")"):
        raise ValueError(f"tool names in parentheses are reserved: {name!r}")
    return name


def check_max_tools(max_tools: object) -> int:
    if isinstance(max_tools, bool) or not isinstance(max_tools, int):
        raise TypeError(f"max_tools must be an int, not {type(max_tools).__name__}")
    if not 0 < max_tools <= _LIMIT_MAX_TOOLS:
        raise ValueError(f"max_tools must be from 1 to {_LIMIT_MAX_TOOLS}, got {max_tools}")
    return max_tools


def merge_tools(
    tools: Mapping[str, ToolStats], more: Mapping[str, ToolStats], cap: int
) -> Mapping[str, ToolStats]:
    """Per-tool stats merged, counts and times added, the longest call kept; a name that
    would take the session past ``cap`` distinct names is merged into ``OTHER``."""
    if not more:
        return tools
    merged = dict(tools)
    named = len(merged) - (OTHER in merged)
    for name, stats in more.items():
        if name not in merged:
            if name != OTHER and named >= cap:
                name = OTHER
            elif name != OTHER:
                named += 1
        merged[name] = merged[name] + stats if name in merged else stats
    return MappingProxyType(merged)
