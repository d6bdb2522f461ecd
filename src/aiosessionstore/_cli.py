"""The ``aiosessionstore`` command: show, reset, renew, delete, export or import a session.

Every command goes through the Backend protocol, so it acts on a session file or on a URL
alike. reset, new, delete and import use the same lock (or transaction) and merge rules as
the store, so they are safe while servers run; each is one synchronous commit, with no event
loop. show and export only read (``peek``): writers replace the file atomically. Whatever is
printed for a reader is escaped, so a name in the file cannot act on the terminal; stdout
carries only what show, path and export print.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import secrets
import stat
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

from ._backend import Backend
from ._change import Change, Mode
from ._codec import encode
from ._display import cell, summary, visible
from ._errors import (
    CorruptSessionError,
    SessionExistsError,
    SessionNotFoundError,
    SessionStoreError,
    UnsupportedVersionError,
)
from ._file import MAX_FILE_SIZE, FileBackend, decode_bounded, fsync_directory, write_new
from ._location import resolve_backend, resolve_path, url_variable
from ._session import Counts, Record, Session, timestamp
from ._version import __version__

__all__ = ("EXIT_CODES", "main")

#: Exit statuses, documented in the README and in ``--help``.
EXIT_CODES = {
    "ok": 0,
    "error": 1,  # the file could not be read or written, the lock timed out, or aborted
    "usage": 2,  # argparse's own; also `path` for a session that is in no file
    "missing": 3,  # no session file (for import: no file to import)
    "corrupt": 4,  # the session file is corrupt: show leaves it, reset and new move it aside
    "newer": 5,  # the file was written by a newer aiosessionstore
    "exists": 6,  # import found a session, or export's --output file exists: nothing changed
}
_LOCK_TIMEOUT = 10.0
_MAX_ANSWER = 64
_SEPARATORS = tuple(sep for sep in (os.sep, os.altsep) if sep)
#: Anything but printable ASCII and the line break: what JSON text may need to escape.
_NOT_PLAIN = re.compile(r"[^\x20-\x7e\n]")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_OUTPUT_MODE = 0o600

Command = Callable[[argparse.Namespace, Backend, TextIO | None], int]


def main(argv: Sequence[str] | None = None, stdin: TextIO | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = _parser()
    try:
        arguments = parser.parse_args(argv)
        backend = _session_backend(parser, arguments)
    except SystemExit as exc:  # argparse has printed the help, or a usage error
        return exc.code if isinstance(exc.code, int) else EXIT_CODES["usage"]
    try:
        command: Command = arguments.command
        try:
            status = command(arguments, backend, sys.stdin if stdin is None else stdin)
        except BaseException:
            with contextlib.suppress(SessionStoreError):  # the command's error says more
                backend.close()
            raise
        backend.close()
        return status
    except _UsageError as exc:
        _say(f"aiosessionstore: error: {exc}")
        return EXIT_CODES["usage"]
    except SessionNotFoundError as exc:
        return _fail(exc, "missing")
    except SessionExistsError as exc:
        return _fail(exc, "exists")
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
    """--path, --url and --app go before or after the command: each place has its own
    destination.

    A subcommand's parser would otherwise overwrite the value given before the command with
    its own default, and act on a file the user did not name. Abbreviations are refused: a
    new option could one day take over the prefix that a script relies on.
    """
    codes = ", ".join(f"{code} {name}" for name, code in EXIT_CODES.items())
    parser = argparse.ArgumentParser(
        prog="aiosessionstore",
        description="Inspect and manage a session, in a file or at a URL; safe while servers "
        "are using it.",
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
    export = _add_command(
        add, "export", _export, "write the session as the session file's JSON; changes nothing"
    )
    export.add_argument(
        "--output",
        "-o",
        metavar="FILE",
        help="write it to FILE (atomically, mode 0600) rather than to standard output",
    )
    export.add_argument(
        "--force", action="store_true", help="replace an existing FILE (without it: exit 6)"
    )
    import_ = _add_command(
        add,
        "import",
        _import,
        "store the session in FILE (its id and all) where none is; changes nothing else",
    )
    import_.add_argument("file", metavar="FILE", help="a session file; - reads standard input")
    import_.add_argument(
        "--force",
        action="store_true",
        help="replace a session that is already stored (without it: exit 6)",
    )
    return parser


def _add_command(
    add_parser: Callable[..., argparse.ArgumentParser],
    name: str,
    function: Command,
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
        "--url",
        action="append",
        dest=f"url{suffix}",
        metavar="URL",
        help="the session at URL, such as a Redis server (default: $<NAME>_SESSION_URL, "
        "if set); not with --path",
    )
    parser.add_argument(
        "--app",
        action="append",
        dest=f"app{suffix}",
        metavar="NAME",
        help="app name (default: octocode): the file is $<NAME>_HOME/session.json, "
        "else ~/.<name>/session.json",
    )


def _session_backend(parser: argparse.ArgumentParser, arguments: argparse.Namespace) -> Backend:
    """The one session the command line names; a second, different name is a usage error.

    Without --path or --url, ``resolve_backend`` reads ``$<APP>_SESSION_URL``, as a store
    does, so the command acts on the session that the app's servers use.
    """
    path = _given_once(parser, "--path", arguments.path_before, arguments.path)
    url = _given_once(parser, "--url", arguments.url_before, arguments.url, secret=True)
    app = _given_once(parser, "--app", arguments.app_before, arguments.app)
    if path is not None and app is not None:
        parser.error("--path and --app both say where the session file is: give one")
    if path is not None and url is not None:
        parser.error("--path and --url both say where the session is: give one")
    if path is not None:
        _check_path_option(parser, path)
    if url is not None and not url.strip():
        parser.error("--url is empty: give the session's URL")
    app_name = "octocode" if app is None else app
    try:
        resolve_path(None, app_name)  # an app name that is a path, refused before any URL
    except ValueError as exc:
        parser.error(str(exc))
    given = url if url is not None else None if path is not None else _url_from(app_name)
    try:
        return resolve_backend(path, url, None, app_name, _LOCK_TIMEOUT)
    except ValueError as exc:  # a URL of no scheme we know, say
        parser.error(_about_url(str(exc), given, url is None, app_name))
    except ImportError as exc:  # the URL's backend needs an extra that is not installed
        _say(f"aiosessionstore: {_about_url(str(exc), given, url is None, app_name)}")
        raise SystemExit(EXIT_CODES["error"]) from None


def _url_from(app_name: str) -> str | None:
    return os.environ.get(url_variable(app_name)) or None


def _about_url(message: str, url: str | None, from_environment: bool, app_name: str) -> str:
    """A message about the session URL, with any password in it masked, and saying where the
    URL came from if it was not typed."""
    if url is not None:
        message = message.replace(url, _redacted(url))
        if from_environment:
            message = f"${url_variable(app_name)}: {message}"
    return message


def _redacted(url: str) -> str:
    """``url`` with the password, if any, as ``***``: messages go to logs and terminals."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # not even a URL: nothing in it can be told to be a password
        return url
    if password is None:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _check_path_option(parser: argparse.ArgumentParser, path: str) -> None:
    last = os.path.basename(path)
    if not path or path.endswith(_SEPARATORS) or last in (".", ".."):  # "" is the cwd
        parser.error(f"--path {path!r} is not a file name: give the session file's path")
    # Judged as resolved, so that "session.json.lock/." is one too.
    if os.path.abspath(os.path.expanduser(path)).endswith(".lock"):
        # one tab too far; deleting it would let two processes each hold "the" lock
        parser.error(f"--path {path!r} is a lock file: give the session file's path")


def _given_once(
    parser: argparse.ArgumentParser,
    option: str,
    *places: list[str] | None,
    secret: bool = False,
) -> str | None:
    """The option's one value; two different values are a usage error (a URL's not quoted:
    it may hold a password)."""
    values = list(dict.fromkeys(value for place in places for value in place or ()))
    if len(values) > 1:
        if secret:
            parser.error(f"{option} is given {len(values)} times, with different values: give one")
        parser.error(f"{option} is given as {' and as '.join(map(repr, values))}: give one")
    return values[0] if values else None


def _show(arguments: argparse.Namespace, backend: Backend, stdin: TextIO | None) -> int:
    _check_target(backend)
    record = backend.peek()
    where = backend.description
    text = _json(record, where, _stdout().encoding or "utf-8")  # NaN, say, is no JSON: exit 4
    if not arguments.json:
        if isinstance(backend, FileBackend):
            text = summary(record.session, str(backend.path), time.time())
        else:
            text = summary(record.session, where, time.time(), label="store")
    _print(text)
    return 0


def _path(arguments: argparse.Namespace, backend: Backend, stdin: TextIO | None) -> int:
    """The path's own bytes for a script; on a terminal, escaped as ``ls`` does.

    A session that is in no file has no path to print: a script that goes on to open what it
    was given must not get a URL, so that is exit status 2, with nothing on stdout.
    """
    if not isinstance(backend, FileBackend):
        raise _UsageError(f"the session is in {backend.description}, which is not a file")
    stream = _stdout()
    if stream.isatty() or not hasattr(stream, "buffer"):
        _print(visible(str(backend.path)))
    else:
        _print_bytes(os.fsencode(backend.path) + b"\n")
    return 0


def _reset(arguments: argparse.Namespace, backend: Backend, stdin: TextIO | None) -> int:
    _check_target(backend, must_exist=True)
    record = _transact(backend, Mode.RESET, known=None)
    _say(f"reset session {cell(record.session.session_id)} in {backend.description}")
    return 0


def _new(arguments: argparse.Namespace, backend: Backend, stdin: TextIO | None) -> int:
    _check_target(backend)
    now = timestamp(time.time())
    record = _transact(backend, Mode.NEW, known=Record(Session.new(now)))
    _say(f"started session {cell(record.session.session_id)} in {backend.description}")
    return 0


def _delete(arguments: argparse.Namespace, backend: Backend, stdin: TextIO | None) -> int:
    _check_target(backend, must_exist=True)
    if not arguments.yes and not _confirmed(f"delete {backend.description}?", stdin):
        _say("not deleted")
        return EXIT_CODES["error"]
    if not backend.remove():
        raise SessionNotFoundError(f"no session in {backend.description}")
    _say(f"deleted {backend.description}")
    return 0


def _export(arguments: argparse.Namespace, backend: Backend, stdin: TextIO | None) -> int:
    """The session's bytes exactly as the file backend writes them (``encode``), so that the
    TypeScript tool, or ``import``, reads the same session; nothing is locked or changed.

    On a terminal the text is shown as ``show --json`` shows it, escaped: the exact bytes are
    for a pipe or a file.
    """
    target = None if arguments.output in (None, "-") else _output_path(arguments.output, backend)
    _check_target(backend)
    record = backend.peek()
    data = _encoded(record, backend.description)
    if target is None:
        _print_export(data, record, backend.description)
        return 0
    _write_output(target, data, arguments.force)
    _say(
        f"exported session {cell(record.session.session_id)} from {backend.description} to {target}"
    )
    return 0


def _import(arguments: argparse.Namespace, backend: Backend, stdin: TextIO | None) -> int:
    """Store a session file's session as it is, in one commit.

    Without --force the commit itself refuses a valid session that is already stored
    (``Mode.IMPORT``): there is no moment between a check and the write for a server to
    store one. A corrupt one is moved aside, as ``new`` does.
    """
    if arguments.file == "-":
        record = _read_stdin(stdin)
    else:
        record = _read_input(_input_path(arguments.file, backend))
    _check_target(backend)
    size = len(_encoded(record, arguments.file))
    if size > MAX_FILE_SIZE:  # compact JSON grows with indents; refused before any write
        raise SessionStoreError(
            f"cannot import {arguments.file}: the session would be {size} bytes, over the "
            f"{MAX_FILE_SIZE}-byte limit; nothing was changed"
        )
    mode = Mode.REPLACE if arguments.force else Mode.IMPORT
    change = Change(mode, Counts(), record.session.last_active_at, record, known_was_saved=False)
    try:
        stored = backend.commit(change)
    except SessionExistsError as exc:
        raise SessionExistsError(f"{backend.description}: {exc} (--force replaces it)") from None
    _say(f"imported session {cell(stored.session.session_id)} into {backend.description}")
    return 0


def _check_target(backend: Backend, must_exist: bool = False) -> None:
    """Before any lock file or directory is made: refuse what is not a session file.

    A directory, device or FIFO is never opened, moved aside or unlinked: as root, ``new``
    would otherwise move /dev/null aside and ``delete`` would remove it. A backend that is no
    file has its own checks.
    """
    if not isinstance(backend, FileBackend):
        return
    path = backend.path
    if not os.path.lexists(path):
        if must_exist:  # and reset or delete creates no directory or lock file to find out
            raise SessionNotFoundError(f"no session file at {path}")
    elif not os.path.isfile(path):
        raise SessionStoreError(f"cannot use session file {path}: it is not a regular file")


def _same_file(one: Path, other: Path) -> bool:
    """Whether two names reach the same file: the same name once links are followed, or the
    same inode (a hard link)."""
    if os.path.realpath(one) == os.path.realpath(other):
        return True
    try:
        return os.path.samefile(one, other)
    except OSError:  # either is missing: then only the names could tell
        return False


def _output_path(output: str, backend: Backend) -> Path:
    """export's --output, refused (exit 2) where writing it would break the session: the
    session file itself, which only a lock holder may replace, or a lock file."""
    if not output or output.endswith(_SEPARATORS) or os.path.basename(output) in (".", ".."):
        raise _UsageError(f"--output {output!r} is not a file name")
    path = Path(os.path.abspath(os.path.expanduser(output)))
    if str(path).endswith(".lock"):
        raise _UsageError(f"--output {output!r} is a lock file name: give another")
    if isinstance(backend, FileBackend) and _same_file(path, backend.path):
        raise _UsageError(f"--output {output!r} is the session file itself: give another file")
    return path


def _input_path(name: str, backend: Backend) -> Path:
    path = Path(os.path.abspath(os.path.expanduser(name)))
    if isinstance(backend, FileBackend) and _same_file(path, backend.path):
        raise _UsageError(f"{name!r} is the session file itself: there is nothing to import")
    return path


def _read_input(path: Path) -> Record:
    """The file to import, read as the file backend reads its own (size, type, version)."""
    try:
        return FileBackend(path).peek()
    except SessionStoreError as exc:
        raise _retold(exc, "cannot import") from None


def _read_stdin(stdin: TextIO | None) -> Record:
    """A session file on standard input, bounded and judged as a file is."""
    if stdin is None:
        raise SessionStoreError("cannot import from standard input: it is closed")
    if stdin.isatty():
        raise _UsageError("standard input is a terminal: pipe a session file in, or name one")
    buffer = getattr(stdin, "buffer", None)
    try:
        if buffer is not None:
            data: bytes = buffer.read(MAX_FILE_SIZE + 1)
        else:
            data = stdin.read(MAX_FILE_SIZE + 1).encode("utf-8", "surrogateescape")
    except OSError as exc:
        raise SessionStoreError(
            f"cannot import from standard input: {exc.strerror or exc}"
        ) from None
    try:
        return decode_bounded(data, "standard input")
    except CorruptSessionError as exc:
        raise CorruptSessionError(f"cannot import: standard input is corrupt ({exc})") from None
    except SessionStoreError as exc:
        raise _retold(exc, "cannot import") from None


def _retold(error: SessionStoreError, context: str) -> SessionStoreError:
    """The same error, of the same class (and so the same exit status), said in context."""
    retold = type(error)(f"{context}: {error}")
    retold.__cause__ = error.__cause__
    return retold


def _encoded(record: Record, where: str) -> bytes:
    try:
        return encode(record)
    except ValueError as exc:  # a value JSON cannot hold, which decode would not have passed
        raise CorruptSessionError(f"{where} holds no valid session ({exc})") from None


def _write_output(path: Path, data: bytes, force: bool) -> None:
    """Write ``data`` at ``path`` atomically: a fresh 0600 temp file beside it, synced, then
    linked in (which fails if the name is taken) or, with ``force``, renamed over it.

    Only a regular file is ever replaced, never followed: a link, directory, FIFO or device
    at ``path`` is left as it is.
    """
    try:
        found = os.lstat(path).st_mode
    except FileNotFoundError:
        found = None
    except OSError as exc:
        raise SessionStoreError(f"cannot write {path}: {exc.strerror or exc}") from None
    if found is not None and not force:
        raise SessionExistsError(f"{path} exists; nothing was written (--force replaces it)")
    if found is not None and not stat.S_ISREG(found):
        what = "a symbolic link" if stat.S_ISLNK(found) else "not a regular file"
        raise SessionStoreError(f"cannot write {path}: it is {what}; it was left as it is")
    temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.export.tmp")
    try:
        try:
            write_new(temp, data)
            if force:
                os.replace(temp, path)
            else:
                _link_new(temp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
        with contextlib.suppress(OSError):  # the file is there; only its durability is less
            fsync_directory(path.parent)
    except FileExistsError:
        raise SessionExistsError(
            f"{path} exists; nothing was written (--force replaces it)"
        ) from None
    except OSError as exc:
        raise SessionStoreError(f"cannot write {path}: {exc.strerror or exc}") from None


def _link_new(temp: Path, path: Path) -> None:
    """Give the written file its name only if no file has it: FileExistsError otherwise."""
    try:
        os.link(temp, path)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: claim the name, then fill it
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, _OUTPUT_MODE))
        os.replace(temp, path)


def _confirmed(question: str, stdin: TextIO | None) -> bool:
    """Ask on stderr, as ``rm -i`` does, so that the question is seen when stdout is not."""
    _say(f"{question} [y/N] ", end="")
    try:
        answer = "" if stdin is None else stdin.readline(_MAX_ANSWER)
    except KeyboardInterrupt:
        _say("")
        return False
    return answer.strip().lower() in ("y", "yes")


def _transact(backend: Backend, mode: Mode, known: Record | None) -> Record:
    now = timestamp(time.time())
    change = Change(mode, Counts(), now, known, known_was_saved=False)
    return backend.commit(change)


def _fail(error: SessionStoreError, kind: str) -> int:
    _say(f"aiosessionstore: {error}")
    return EXIT_CODES[kind]


class _OutputError(Exception):
    """stdout cannot take the output; the argument, if any, says why."""


class _UsageError(Exception):
    """A usage error found once the session is known: exit status 2, as argparse's."""


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
    """``data`` on stdout as it is: no line break is added."""
    stream = _stdout()
    with _writing():
        stream.flush()
        stream.buffer.write(data)
        stream.buffer.flush()


def _print_export(data: bytes, record: Record, where: str) -> None:
    """The exact bytes for a pipe or a file; on a terminal, ``show --json``'s escaped text."""
    stream = _stdout()
    if stream.isatty():
        _print(_json(record, where, stream.encoding or "utf-8"))
    elif hasattr(stream, "buffer"):
        _print_bytes(data)
    else:  # a text stream (in-process): encode's UTF-8 is always valid, so this is exact
        with _writing():
            stream.write(data.decode())
            stream.flush()


def _say(message: str, end: str = "\n") -> None:
    """A message on stderr, escaped; lost if stderr is closed, never printed on stdout."""
    if sys.stderr is None:  # print(file=None) would write to stdout
        return
    with contextlib.suppress(OSError):
        sys.stderr.write(visible(message) + end)
        sys.stderr.flush()


def _json(record: Record, where: str, encoding: str) -> str:
    """The file as stored, as strict JSON; escapes stand for what a terminal would act on.

    Where stdout cannot encode a name, all of the text is ASCII, so it stays valid JSON.
    """
    document = _document(record)
    text = _dumps(document, where, ascii_only=False)
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        text = _dumps(document, where, ascii_only=True)
    return text


def _dumps(document: dict[str, Any], where: str, ascii_only: bool) -> str:
    try:
        text = json.dumps(document, indent=2, ensure_ascii=ascii_only, allow_nan=False)
    except ValueError as exc:  # NaN or Infinity among the unknown keys: JSON has neither
        raise CorruptSessionError(f"{where} is corrupt ({exc}); it was left in place") from None
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
