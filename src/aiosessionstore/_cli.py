"""The ``aiosessionstore`` command: show, reset, renew or delete a session file.

reset, new and delete use the same lock and merge rules as the store, so they are safe while
servers run; each is one synchronous, locked transaction, with no event loop. show only reads,
without the lock: writers replace the file atomically. Whatever is printed is escaped, so a
name in the file cannot act on the terminal; stdout carries only what show and path print.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from . import _file
from ._change import Change, Mode
from ._codec import encode
from ._display import cell, summary, visible
from ._errors import (
    CorruptSessionError,
    SessionNotFoundError,
    SessionStoreError,
    UnsupportedVersionError,
)
from ._location import resolve_path
from ._session import Counts, Record, Session, timestamp
from ._version import __version__

__all__ = ("EXIT_CODES", "main")

#: Exit statuses, documented in the README and in ``--help``.
EXIT_CODES = {
    "ok": 0,
    "error": 1,  # the file could not be read or written, the lock timed out, or aborted
    "usage": 2,  # argparse's own
    "missing": 3,  # no session file
    "corrupt": 4,  # the session file is corrupt: show leaves it, reset and new move it aside
    "newer": 5,  # the file was written by a newer aiosessionstore
}
_LOCK_TIMEOUT = 10.0
_MAX_ANSWER = 64
_SEPARATORS = tuple(sep for sep in (os.sep, os.altsep) if sep)
#: Anything but printable ASCII and the line break: what JSON text may need to escape.
_NOT_PLAIN = re.compile(r"[^\x20-\x7e\n]")


def main(argv: Sequence[str] | None = None, stdin: TextIO | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = _parser()
    try:
        arguments = parser.parse_args(argv)
        path = _session_path(parser, arguments)
    except SystemExit as exc:  # argparse has printed the help, or a usage error
        return exc.code if isinstance(exc.code, int) else EXIT_CODES["usage"]
    try:
        command: Callable[[argparse.Namespace, Path, TextIO | None], int] = arguments.command
        return command(arguments, path, sys.stdin if stdin is None else stdin)
    except SessionNotFoundError as exc:
        return _fail(exc, "missing")
    except CorruptSessionError as exc:
        return _fail(exc, "corrupt")
    except UnsupportedVersionError as exc:
        return _fail(exc, "newer")
    except SessionStoreError as exc:
        return _fail(exc, "error")
    except _OutputError as exc:
        if exc.args:  # a reader that went away (`| head`) needs no message
            _say(f"aiosessionstore: cannot write to standard output: {exc}")
        return EXIT_CODES["error"]
    except KeyboardInterrupt:
        _say("aiosessionstore: interrupted")
        return EXIT_CODES["error"]


def _parser() -> argparse.ArgumentParser:
    """--path and --app go before or after the command: each place has its own destination.

    A subcommand's parser would otherwise overwrite the value given before the command with
    its own default, and act on a file the user did not name. Abbreviations are refused: a
    new option could one day take over the prefix that a script relies on.
    """
    codes = ", ".join(f"{code} {name}" for name, code in EXIT_CODES.items())
    parser = argparse.ArgumentParser(
        prog="aiosessionstore",
        description="Inspect and manage a session file; safe while servers are using it.",
        epilog=f"exit statuses: {codes}",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_location_options(parser, suffix="_before")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    add = commands.add_parser
    show = _add_command(add, "show", _show, "summarize the session; changes nothing")
    show.add_argument("--json", action="store_true", help="print the session file as stored")
    _add_command(add, "path", _path, "print the session file's path")
    _add_command(add, "reset", _reset, "zero the counters and per-tool stats, keep the id")
    _add_command(add, "new", _new, "start a new session id")
    delete = _add_command(add, "delete", _delete, "delete the session file")
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    return parser


def _add_command(
    add_parser: Callable[..., argparse.ArgumentParser],
    name: str,
    function: Callable[[argparse.Namespace, Path, TextIO | None], int],
    summary: str,
) -> argparse.ArgumentParser:
    command = add_parser(name, help=summary, description=summary, allow_abbrev=False)
    _add_location_options(command, suffix="")
    command.set_defaults(command=function)
    return command


def _add_location_options(parser: argparse.ArgumentParser, suffix: str) -> None:
    parser.add_argument(
        "--path",
        action="append",
        dest=f"path{suffix}",
        metavar="FILE",
        help="the session file (default: found from --app)",
    )
    parser.add_argument(
        "--app",
        action="append",
        dest=f"app{suffix}",
        metavar="NAME",
        help="app name (default: octocode): the file is $<NAME>_HOME/session.json, "
        "else ~/.<name>/session.json",
    )


def _session_path(parser: argparse.ArgumentParser, arguments: argparse.Namespace) -> Path:
    """The one file the command line names; a second, different name is a usage error."""
    path = _given_once(parser, "--path", arguments.path_before, arguments.path)
    app = _given_once(parser, "--app", arguments.app_before, arguments.app)
    if path is not None and app is not None:
        parser.error("--path and --app both say where the session file is: give one")
    if path is not None:
        _check_path_option(parser, path)
    try:
        return resolve_path(path, "octocode" if app is None else app)
    except ValueError as exc:  # an app name that is a path
        parser.error(str(exc))


def _check_path_option(parser: argparse.ArgumentParser, path: str) -> None:
    last = os.path.basename(path)
    if not path or path.endswith(_SEPARATORS) or last in (".", ".."):  # "" is the cwd
        parser.error(f"--path {path!r} is not a file name: give the session file's path")
    # Judged as resolved, so that "session.json.lock/." is one too.
    if os.path.abspath(os.path.expanduser(path)).endswith(".lock"):
        # one tab too far; deleting it would let two processes each hold "the" lock
        parser.error(f"--path {path!r} is a lock file: give the session file's path")


def _given_once(
    parser: argparse.ArgumentParser, option: str, *places: list[str] | None
) -> str | None:
    values = list(dict.fromkeys(value for place in places for value in place or ()))
    if len(values) > 1:
        parser.error(f"{option} is given as {' and as '.join(map(repr, values))}: give one")
    return values[0] if values else None


def _show(arguments: argparse.Namespace, path: Path, stdin: TextIO | None) -> int:
    _check_target(path)
    record = _file.peek(path)
    text = _json(record, path, _stdout().encoding or "utf-8")  # NaN, say, is no JSON: exit 4
    _print(text if arguments.json else summary(record.session, path, time.time()))
    return 0


def _path(arguments: argparse.Namespace, path: Path, stdin: TextIO | None) -> int:
    """The path's own bytes for a script; on a terminal, escaped as ``ls`` does."""
    stream = _stdout()
    if stream.isatty() or not hasattr(stream, "buffer"):
        _print(visible(str(path)))
    else:
        _print_bytes(os.fsencode(path))
    return 0


def _reset(arguments: argparse.Namespace, path: Path, stdin: TextIO | None) -> int:
    _check_target(path, must_exist=True)
    record = _transact(path, Mode.RESET, known=None)
    _say(f"reset session {cell(record.session.session_id)} in {path}")
    return 0


def _new(arguments: argparse.Namespace, path: Path, stdin: TextIO | None) -> int:
    _check_target(path)
    now = timestamp(time.time())
    record = _transact(path, Mode.NEW, known=Record(Session.new(now)))
    _say(f"started session {cell(record.session.session_id)} in {path}")
    return 0


def _delete(arguments: argparse.Namespace, path: Path, stdin: TextIO | None) -> int:
    _check_target(path, must_exist=True)
    if not arguments.yes and not _confirmed(f"delete {path}?", stdin):
        _say("not deleted")
        return EXIT_CODES["error"]
    if not _file.remove(path, _LOCK_TIMEOUT):
        raise SessionNotFoundError(f"no session file at {path}")
    _say(f"deleted {path}")
    return 0


def _check_target(path: Path, must_exist: bool = False) -> None:
    """Before any lock file or directory is made: refuse what is not a session file.

    A directory, device or FIFO is never opened, moved aside or unlinked: as root, ``new``
    would otherwise move /dev/null aside and ``delete`` would remove it.
    """
    if not os.path.lexists(path):
        if must_exist:  # and reset or delete creates no directory or lock file to find out
            raise SessionNotFoundError(f"no session file at {path}")
    elif not os.path.isfile(path):
        raise SessionStoreError(f"cannot use session file {path}: it is not a regular file")


def _confirmed(question: str, stdin: TextIO | None) -> bool:
    """Ask on stderr, as ``rm -i`` does, so that the question is seen when stdout is not."""
    _say(f"{question} [y/N] ", end="")
    try:
        answer = "" if stdin is None else stdin.readline(_MAX_ANSWER)
    except KeyboardInterrupt:
        _say("")
        return False
    return answer.strip().lower() in ("y", "yes")


def _transact(path: Path, mode: Mode, known: Record | None) -> Record:
    now = timestamp(time.time())
    change = Change(mode, Counts(), now, known, known_was_saved=False)
    return _file.commit(path, change, _LOCK_TIMEOUT)


def _fail(error: SessionStoreError, kind: str) -> int:
    _say(f"aiosessionstore: {error}")
    return EXIT_CODES[kind]


class _OutputError(Exception):
    """stdout cannot take the output; the argument, if any, says why."""


def _stdout() -> TextIO:
    if sys.stdout is None:  # started with stdout closed (`>&-`)
        raise _OutputError("standard output is closed")
    return sys.stdout


@contextlib.contextmanager
def _writing() -> Iterator[None]:
    try:
        yield
    except BrokenPipeError:
        raise _OutputError() from None
    except OSError as exc:
        raise _OutputError(exc.strerror or str(exc)) from None


def _print(text: str) -> None:
    """A line on stdout; what its encoding cannot hold is escaped, not an error."""
    stream = _stdout()
    encoding = stream.encoding or "utf-8"
    with _writing():
        stream.write(text.encode(encoding, "backslashreplace").decode(encoding) + "\n")
        stream.flush()


def _print_bytes(data: bytes) -> None:
    stream = _stdout()
    with _writing():
        stream.flush()
        stream.buffer.write(data + b"\n")
        stream.buffer.flush()


def _say(message: str, end: str = "\n") -> None:
    """A message on stderr, escaped; lost if stderr is closed, never printed on stdout."""
    if sys.stderr is None:  # print(file=None) would write to stdout
        return
    with contextlib.suppress(OSError):
        sys.stderr.write(visible(message) + end)
        sys.stderr.flush()


def _json(record: Record, path: Path, encoding: str) -> str:
    """The file as stored, as strict JSON; escapes stand for what a terminal would act on.

    Where stdout cannot encode a name, all of the text is ASCII, so it stays valid JSON.
    """
    document = _document(record)
    text = _dumps(document, path, ascii_only=False)
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        text = _dumps(document, path, ascii_only=True)
    return text


def _dumps(document: dict[str, Any], path: Path, ascii_only: bool) -> str:
    try:
        text = json.dumps(document, indent=2, ensure_ascii=ascii_only, allow_nan=False)
    except ValueError as exc:  # NaN or Infinity among the unknown keys: JSON has neither
        raise CorruptSessionError(
            f"session file {path} is corrupt ({exc}); it was left in place"
        ) from None
    # Outside strings JSON text is plain ASCII, so whatever is escaped here is in a string.
    return _NOT_PLAIN.sub(_json_escape, text)


def _json_escape(match: re.Match[str]) -> str:
    char = match[0]
    if char.isprintable():
        return char
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # a UTF-16 surrogate pair, as JSON spells a character beyond the BMP
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def _document(record: Record) -> dict[str, Any]:
    """The file's JSON value, exactly as ``encode`` writes it (a lone surrogate escaped)."""
    document: dict[str, Any] = json.loads(encode(record))
    return document


def run() -> None:
    """Console-script entry point: the library's log lines go to stderr, like its messages."""
    if sys.stderr is not None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_EscapingFormatter("aiosessionstore: %(message)s"))
        logging.getLogger("aiosessionstore").addHandler(handler)
    status = main()
    _drop_unwritten_output()
    sys.exit(status)


class _EscapingFormatter(logging.Formatter):
    """A warning may quote the file (a corrupt tool's name): escape it as messages are."""

    def format(self, record: logging.LogRecord) -> str:
        return visible(super().format(record))


def _drop_unwritten_output() -> None:
    """A failed write stays buffered, and the flush at exit would fail again, noisily."""
    stream = sys.stdout
    if stream is None:
        return
    try:
        stream.flush()
    except OSError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)


if __name__ == "__main__":  # pragma: no cover
    run()
