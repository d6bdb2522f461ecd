"""The ``aiosessionstore`` command: show, reset, renew or delete a session file.

It uses the same lock and merge rules as the store, so it is safe while servers run. It needs
no event loop: each command is one synchronous, locked transaction.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

from . import _file
from ._errors import (
    CorruptSessionError,
    SessionNotFoundError,
    SessionStoreError,
    UnsupportedVersionError,
)
from ._file import Change, Mode
from ._location import resolve_path
from ._session import Record, Session, SessionStats, encode, timestamp

__all__ = ("EXIT_CODES", "main")

#: Exit statuses, documented in the README and in ``--help``.
EXIT_CODES = {
    "ok": 0,
    "error": 1,  # the file could not be read or written, the lock timed out, or aborted
    "usage": 2,  # argparse's own
    "missing": 3,  # no session file
    "corrupt": 4,  # the session file was corrupt; it was moved aside
    "newer": 5,  # the file was written by a newer aiosessionstore
}
_LOCK_TIMEOUT = 10.0
_TOP_TOOLS = 10


def main(argv: Sequence[str] | None = None, stdin: TextIO | None = None) -> int:
    """Run the command line; return the exit status."""
    arguments = _parser().parse_args(argv)
    try:
        path = resolve_path(arguments.path, arguments.app)
    except ValueError as exc:
        print(f"aiosessionstore: {exc}", file=sys.stderr)
        return EXIT_CODES["usage"]
    try:
        command: Callable[[argparse.Namespace, Path, TextIO], int] = arguments.command
        return command(arguments, path, stdin or sys.stdin)
    except SessionNotFoundError as exc:
        return _fail(exc, "missing")
    except CorruptSessionError as exc:
        return _fail(exc, "corrupt")
    except UnsupportedVersionError as exc:
        return _fail(exc, "newer")
    except SessionStoreError as exc:
        return _fail(exc, "error")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--path", help="the session file (default: from --app)")
    common.add_argument(
        "--app",
        default="octocode",
        help="app name: the file is $<APP>_HOME/session.json or ~/.<app>/session.json",
    )
    codes = ", ".join(f"{code} {name}" for name, code in EXIT_CODES.items())
    parser = argparse.ArgumentParser(
        prog="aiosessionstore",
        description="Inspect and manage a session file; safe while servers are using it.",
        epilog=f"exit statuses: {codes}",
        parents=[common],
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    show = commands.add_parser("show", parents=[common], help="summarize the session")
    show.add_argument("--json", action="store_true", help="print the session file as stored")
    show.set_defaults(command=_show)
    path = commands.add_parser("path", parents=[common], help="print the session file's path")
    path.set_defaults(command=_path)
    commands.add_parser(
        "reset", parents=[common], help="zero the counters and per-tool stats, keep the id"
    ).set_defaults(command=_reset)
    commands.add_parser("new", parents=[common], help="start a new session id").set_defaults(
        command=_new
    )
    delete = commands.add_parser("delete", parents=[common], help="delete the session file")
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    delete.set_defaults(command=_delete)
    return parser


def _show(arguments: argparse.Namespace, path: Path, stdin: TextIO) -> int:
    record = _file.read(path, _LOCK_TIMEOUT)
    if arguments.json:
        print(encode(record).decode())
    else:
        print(summary(record.session, path, time.time()))
    return 0


def _path(arguments: argparse.Namespace, path: Path, stdin: TextIO) -> int:
    print(path)
    return 0


def _reset(arguments: argparse.Namespace, path: Path, stdin: TextIO) -> int:
    record = _transact(path, Mode.RESET, known=None)
    print(f"reset session {record.session.session_id} in {path}")
    return 0


def _new(arguments: argparse.Namespace, path: Path, stdin: TextIO) -> int:
    now = timestamp(time.time())
    record = _transact(path, Mode.NEW, known=Record(Session.new(now)))
    print(f"started session {record.session.session_id} in {path}")
    return 0


def _delete(arguments: argparse.Namespace, path: Path, stdin: TextIO) -> int:
    if not arguments.yes:
        print(f"delete {path}? [y/N] ", end="", flush=True)
        if stdin.readline().strip().lower() not in ("y", "yes"):
            print("not deleted", file=sys.stderr)
            return EXIT_CODES["error"]
    if not _file.remove(path, _LOCK_TIMEOUT):
        raise SessionNotFoundError(f"no session file at {path}")
    print(f"deleted {path}")
    return 0


def _transact(path: Path, mode: Mode, known: Record | None) -> Record:
    now = timestamp(time.time())
    change = Change(mode, SessionStats(), {}, now, known, known_was_saved=False)
    return _file.commit(path, change, _LOCK_TIMEOUT)


def _fail(error: SessionStoreError, kind: str) -> int:
    print(f"aiosessionstore: {error}", file=sys.stderr)
    return EXIT_CODES[kind]


def summary(session: Session, path: Path, now: float) -> str:
    """A readable summary: id, age, last activity, counters, and the busiest tools."""
    stats = session.stats
    lines = [
        f"session      {session.session_id}",
        f"file         {path}",
        f"created      {_when(session.created_at, now)}",
        f"last active  {_when(session.last_active_at, now)}",
        f"tool calls   {stats.tool_calls}",
        f"prompt calls {stats.prompt_calls}",
        f"errors       {stats.errors}",
        f"rate limits  {stats.rate_limits}",
    ]
    if session.tools:
        busiest = sorted(
            session.tools.items(), key=lambda item: (-item[1].calls, -item[1].errors, item[0])
        )[:_TOP_TOOLS]
        width = max(len("tool"), *(len(name) for name, _ in busiest))
        lines += ["", f"{'tool':<{width}}  calls  errors  rate limits  avg ms  max ms"]
        for name, tool in busiest:
            average = tool.total_ms / tool.calls if tool.calls else 0.0
            lines.append(
                f"{name:<{width}}  {tool.calls:>5}  {tool.errors:>6}  {tool.rate_limits:>11}"
                f"  {average:>6.2f}  {tool.max_ms:>6.2f}"
            )
    return "\n".join(lines)


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


def run() -> None:
    """Console-script entry point: the library's log lines go to stderr, like its messages."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("aiosessionstore: %(message)s"))
    logging.getLogger("aiosessionstore").addHandler(handler)
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
