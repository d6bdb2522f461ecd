"""What ``aiosessionstore show`` prints: a summary of a session, safe for any terminal.

Everything here that comes from the file is escaped and cut to one cell, so that no name can
act on the terminal, forge a row or a column, or push the table off the screen.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone

from ._session import ClientStats, Session, ToolStats

__all__ = ("cell", "escape", "summary", "visible")

_TOP = 10  # rows per table: the busiest
_MAX_CELL = 64  # the longest tool name most model APIs accept
_CALL_COLUMNS = ("calls", "errors", "limited", "avg ms", "p50 ms", "p95 ms", "p99 ms", "max ms")


def summary(session: Session, where: str, now: float, label: str = "file") -> str:
    """Id, where it is stored (``label``: "file", or "store" for a backend without a file),
    age, last activity, counters, and the busiest tools, prompts and clients."""
    stats = session.stats
    lines = [
        f"session      {cell(session.session_id)}",
        f"{label:<13}{visible(where)}",
        f"created      {_when(session.created_at, now)}",
        f"last active  {_when(session.last_active_at, now)}",
        f"tool calls   {stats.tool_calls}",
        f"prompt calls {stats.prompt_calls}",
        f"errors       {stats.errors}",
        f"rate limits  {stats.rate_limits}",
    ]
    if session.tools:
        lines += ["", *_calls_table("tool", session.tools)]
    if session.prompts:
        lines += ["", *_calls_table("prompt", session.prompts)]
    if session.clients:
        lines += ["", *_clients_table(session.clients)]
    return "\n".join(lines)


def _calls_table(title: str, entries: Mapping[str, ToolStats]) -> list[str]:
    """The busiest entries by calls, then errors: counts and times in milliseconds."""
    busiest = sorted(entries.items(), key=lambda item: (-item[1].calls, -item[1].errors, item[0]))
    rows = [[cell(name), *_call_cells(stats)] for name, stats in busiest[:_TOP]]
    return _table([title, *_CALL_COLUMNS], rows)


def _call_cells(stats: ToolStats) -> list[str]:
    average = stats.total_ms / stats.calls if stats.calls else 0.0
    times = (average, stats.p50, stats.p95, stats.p99, stats.max_ms)
    return [
        str(stats.calls),
        str(stats.errors),
        str(stats.rate_limits),
        *("-" if ms is None else f"{ms:.2f}" for ms in times),
    ]


def _clients_table(clients: Mapping[str, ClientStats]) -> list[str]:
    busiest = sorted(
        clients.items(), key=lambda item: (-(item[1].tool_calls + item[1].prompt_calls), item[0])
    )
    rows = [
        [cell(name), str(client.tool_calls), str(client.prompt_calls)]
        for name, client in busiest[:_TOP]
    ]
    return _table(["client", "tool calls", "prompt calls"], rows)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Left-aligned names, right-aligned numbers, two spaces between columns."""
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]

    def line(row: list[str]) -> str:
        name, *numbers = row
        cells = [name.ljust(widths[0])]
        cells += [number.rjust(width) for number, width in zip(numbers, widths[1:], strict=True)]
        return "  ".join(cells).rstrip()

    return [line(header), *map(line, rows)]


def visible(text: str) -> str:
    """``text`` with each character a terminal would not show as itself escaped.

    That is C0 and C1 controls, DEL, bidi overrides and other format characters, line and
    paragraph separators, and lone surrogates (which no UTF-8 stream can even encode).
    """
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else escape(char) for char in text)


def cell(text: str) -> str:
    """A string from the file as one table cell: visible, no spaces, at most _MAX_CELL long.

    Backslashes are escaped too, so an escape shown always stands for the character.
    """
    pieces = [_cell_char(char) for char in text[: _MAX_CELL + 1]]
    if len(text) <= _MAX_CELL and sum(map(len, pieces)) <= _MAX_CELL:
        return "".join(pieces)
    kept, length = [], 0
    for piece in pieces:
        length += len(piece)
        if length > _MAX_CELL - len("..."):
            break
        kept.append(piece)
    return "".join(kept) + "..."


def _cell_char(char: str) -> str:
    if char == "\\":
        return "\\\\"
    if char == " " or not char.isprintable():
        return escape(char)
    return char


def escape(char: str) -> str:
    """Python's own escape for one character: ``\\n``, ``\\x1b``, ``\\u202e``, ``\\U000e0041``."""
    code = ord(char)
    if char in "\n\r\t":
        return repr(char)[1:-1]
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _when(moment: datetime, now: float) -> str:
    seconds = max(0.0, now - moment.timestamp())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = int(seconds // size)
            ago = f"{count} {unit}{'s' if count != 1 else ''} ago"
            break
    else:
        ago = "just now"
    return f"{moment.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S} UTC ({ago})"
