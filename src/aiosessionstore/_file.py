"""The session file: locked read-merge-write transactions, atomic and durable.

Every function here is synchronous and blocking on purpose: the store runs each whole
transaction in one hop to its own thread, which costs far less than a hop per system call,
and the same code serves a synchronous flush at interpreter exit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import stat
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path

from ._change import Change
from ._codec import Encoded, decode, decode_after, encode, encode_parts_after, let_others_run
from ._errors import (
    CorruptSessionError,
    SessionNotFoundError,
    SessionStoreError,
    UnsupportedVersionError,
)
from ._lock import describe, held
from ._session import Record

__all__ = (
    "MAX_FILE_SIZE",
    "FileBackend",
    "commit",
    "decode_bounded",
    "open_session",
    "peek",
    "read",
    "remove",
)

logger = logging.getLogger("aiosessionstore")

#: The most a session file may hold. A session is some 200 bytes plus about 150 per tool, so
#: this is room for some 100,000 tools, while a read stays a few tens of milliseconds and a
#: few tens of MiB of memory. A larger file is corrupt; a larger session is not written.
MAX_FILE_SIZE = 16 * 1024 * 1024

_DIR_MODE = 0o700
_FILE_MODE = 0o600
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
#: A link to a regular file is read as before; O_NONBLOCK and O_NOCTTY are for a FIFO or a
#: terminal that replaced it between our stat and our open: the open must not wait or adopt.
_READ_FLAGS = (
    os.O_RDONLY
    | _CLOEXEC
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_BINARY", 0)
)
_DIRECTORY_FLAGS = os.O_RDONLY | _CLOEXEC | getattr(os, "O_DIRECTORY", 0)
_CHUNK = 64 * 1024  # a multiple of what any pseudo-file reads in (/proc/self/pagemap: 8)


def _iov_max() -> int:
    """The most buffers one writev takes: POSIX's IOV_MAX, at least 16 (Linux's is 1,024)."""
    try:
        value = os.sysconf("SC_IOV_MAX")
    except (AttributeError, ValueError, OSError):
        return 16
    return min(value, 1024) if value >= 16 else 16


_IOV_MAX = _iov_max()

#: What follows the session file's name in the name of a temp file of ours, and nobody else's:
#: ".aiosessionstore-<16 hex>.tmp", or ".<16 hex>.tmp" as earlier versions named them.
#: Not "session.json.tmp", the TypeScript tool's: it takes no lock of ours, so its temp file
#: may be in flight at any time.
_TEMP_MARKER = "aiosessionstore-"
_TEMP_SUFFIX = re.compile(rf"\.(?:{_TEMP_MARKER})?[0-9a-f]{{16}}\.tmp")

#: What the stale-temp cleanup has logged already, so that a file it cannot remove is logged
#: once per process rather than at every flush.
_reported: set[str] = set()
#: Seconds between a backend's looks for the temp files of writers that died, after the look
#: of its first transaction: a look lists the whole directory, which a flush should not pay
#: each time (a ~/.octocode holds a few files; a /tmp may hold thousands).
SWEEP_EVERY = 60.0


class _Where:
    """A session file's path and those of its neighbours, made once per backend: pathlib
    makes each anew (a few µs a time, holding the GIL) at every transaction."""

    __slots__ = ("directory", "lock", "name", "path", "temp")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.name
        self.directory = path.parent
        self.lock = _lock_path(path)
        #: What a temp file's name starts with, in the same directory.
        self.temp = f"{path}.{_TEMP_MARKER}"


class Written:
    """What one FileBackend last wrote (or read) under the lock: the file's bytes, and the
    record they decode to. Trusted only while the file holds exactly those bytes."""

    __slots__ = ("last", "swept_at", "where")

    def __init__(self) -> None:
        self.last: Encoded | None = None
        self.where: _Where | None = None
        #: When this backend last looked for stale temp files (``time.monotonic``), if ever.
        self.swept_at: float | None = None

    def sweep_due(self) -> bool:
        """Whether this transaction should look for stale temp files: the first one does,
        then one at most every ``SWEEP_EVERY`` seconds."""
        now = time.monotonic()
        if self.swept_at is not None and now - self.swept_at < SWEEP_EVERY:
            return False
        self.swept_at = now
        return True

    def at(self, path: Path) -> _Where:
        where = self.where
        if where is None or (where.path is not path and where.path != path):
            where = self.where = _Where(path)
        return where


def commit(
    path: Path, change: Change, lock_timeout: float, written: Written | None = None
) -> Record:
    """Apply ``change`` to the session file under the inter-process lock; return what is on disk.

    With ``written``, what this backend wrote last: if the file still holds exactly those
    bytes, their record is taken as read (no parse), and the lines of the entries that did
    not change are reused (no encode), so a flush costs what changed, not the whole file.
    """
    path = _target(path)
    where = _Where(path) if written is None else written.at(path)
    sweep = written is None or written.sweep_due()
    with _translated_errors(path), _locked(where, lock_timeout, sweep):
        previous = None if written is None else written.last
        if written is not None:
            written.last = None  # trusted again only once this transaction has landed
        base, known = _read_base(path, change, previous)
        let_others_run()
        record = change.apply(base)
        let_others_run()
        # Built on what was read: only the names the change touched may differ.
        touched = None if known is None else change.touched()
        data, encoded = encode_parts_after(record, known, touched)
        size = sum(map(len, data)) if encoded is None else encoded.size
        if size > MAX_FILE_SIZE and _unwritable(base, change):
            # A file we could read but cannot write back even unchanged (compact JSON grows
            # with indents): no write would ever succeed over it, so it is treated as corrupt.
            _set_aside(path, f"it would be {size} bytes written back, over the limit")
            assert change.known is not None
            record = change.apply(change.known)
            data, encoded = [encode(record)], None
            size = len(data[0])
        _write_atomic(where, data, size)
        if written is not None:
            written.last = encoded
    # Outside the lock: the rename has landed, and the next writer, who reads it, need not
    # wait for it to be made durable too (about a fifth of the time the lock was held).
    _sync_directory(where)
    return record


def read(path: Path, lock_timeout: float) -> Record:
    """The session on disk, changing nothing but moving a corrupt file aside."""
    path = _target(path)
    with _translated_errors(path), _locked(_Where(path), lock_timeout):
        return _read_existing(path)


def open_session(
    path: Path, change: Change, lock_timeout: float, written: Written | None = None
) -> Record:
    """The first transaction of a store: warn about an unsafe directory, then commit."""
    record = commit(path, change, lock_timeout, written)
    with _translated_errors(path):
        _warn_if_others_can_write(path.parent)
        target = _target(path)
        if target.parent != path.parent:  # a link into another directory: that one too
            _warn_if_others_can_write(target.parent)
    return record


def remove(path: Path, lock_timeout: float) -> bool:
    """Delete the session file under the lock; True if it existed. The lock file stays.

    The file is judged first, as every reader does: one of a newer version is left alone
    (UnsupportedVersionError), a corrupt one is moved aside rather than deleted, and
    anything but a regular file (or a link to one, whose file is deleted) is refused.
    """
    path = _target(path)
    with _translated_errors(path), _locked(_Where(path), lock_timeout):
        try:
            _decode_file(path)
        except FileNotFoundError:
            return False
        except CorruptSessionError as exc:
            aside = _quarantine(path, datetime.now(timezone.utc))
            logger.warning(
                "session file %s is corrupt (%s); moved it to %s instead of deleting it",
                path,
                exc,
                aside,
            )
            return True
        try:
            path.unlink()
        except FileNotFoundError:  # not ours: another remover, without our lock
            return False
        return True


def _target(path: Path) -> Path:
    """The file to lock beside, read, replace and delete: the session file, or, where a
    link is at the session path, the file it leads to (made there if it is missing).
    Replacing the link itself would cut it, and the processes that name its file would take
    another lock file. A link to anything but a regular file is refused here, before a lock
    file is made beside what it leads to (a device in /dev, say)."""
    try:
        if not stat.S_ISLNK(os.lstat(path).st_mode):
            return path
    except OSError:
        return path  # missing, or not to be looked at: the open that follows says why
    target = Path(os.path.realpath(path))
    with contextlib.suppress(FileNotFoundError):  # a file not made yet, or deleted
        _refuse_unless_regular(path, os.stat(target).st_mode)
    return target


@contextlib.contextmanager
def _translated_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.filename and os.fspath(exc.filename) != str(path):
            reason = f"{reason}: {exc.filename}"
        raise SessionStoreError(f"cannot use session file {path}: {reason}") from exc


@contextlib.contextmanager
def _locked(where: _Where, timeout: float, sweep: bool = True) -> Iterator[None]:
    """Hold the lock file beside the session file, creating the directory first if need be;
    with ``sweep``, remove the temp files of writers that died."""
    # A stat, where mkdir(exist_ok=True) would cost a failed mkdir each time.
    if not os.path.isdir(where.directory):
        _make_directories(where.directory)
    with held(where.lock, timeout):
        if sweep:
            _remove_stale_temp_files(where.directory, where.name)
        yield


def _make_directories(directory: Path) -> None:
    """Create ``directory`` and its missing parents 0700, whatever the umask: a umask of 0277
    would otherwise leave them 0500, where nothing can be written."""
    missing = []
    while not os.path.isdir(directory):
        missing.append(directory)
        if directory.parent == directory:
            break
        directory = directory.parent
    for created in reversed(missing):
        try:
            os.mkdir(created, _DIR_MODE)
        except FileExistsError:
            if os.path.isdir(created):
                continue  # another process made it meanwhile
            raise
        os.chmod(created, _DIR_MODE)


def _warn_if_others_can_write(directory: Path) -> None:
    """As ssh does for key files: others who can write here can replace the session file."""
    if sys.platform == "win32":
        return
    mode = directory.stat().st_mode
    if mode & 0o022:
        logger.warning(
            "session directory %s is writable by other users (mode %o); run: chmod 700 %s",
            directory,
            mode & 0o777,
            directory,
        )


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _read_base(
    path: Path, change: Change, previous: Encoded | None = None
) -> tuple[Record, Encoded | None]:
    """The record to build on: the file's, or what the change puts in place of a missing or
    corrupt one; and the file's bytes with it, if it was read. A file of exactly
    ``previous.data`` is ``previous.record``, unparsed."""
    try:
        data = _read_bounded(path)
        if previous is not None and previous.matches(data):
            return previous.record, previous
        with _judged(data, str(path)):
            encoded = decode_after(data, previous)
        return encoded.record, encoded
    except FileNotFoundError:
        return change.base_when_missing(f"session file at {path}"), None
    except CorruptSessionError as exc:
        replacement = change.base_when_corrupt()
        if replacement is None:
            aside = _quarantine(path, datetime.now(timezone.utc))
            raise CorruptSessionError(
                f"session file {path} was corrupt ({exc}); it was moved to {aside}", aside
            ) from None
        _set_aside(path, str(exc))
        return replacement, None


def _unwritable(base: Record, change: Change) -> bool:
    """Whether ``base``, read from the file, is too large to write back even unchanged."""
    if change.known is None or base is change.known:
        return False
    return len(encode(base)) > MAX_FILE_SIZE


def _set_aside(path: Path, why: str) -> None:
    aside = _quarantine(path, datetime.now(timezone.utc))
    logger.warning(
        "session file %s is corrupt (%s); moved it to %s and wrote a valid one in its place",
        path,
        why,
        aside,
    )


def _read_existing(path: Path) -> Record:
    """The file's record; a missing file or a corrupt one (moved aside) is an error."""
    try:
        return _decode_file(path)
    except FileNotFoundError:
        raise SessionNotFoundError(f"no session file at {path}") from None
    except CorruptSessionError as exc:
        aside = _quarantine(path, datetime.now(timezone.utc))
        raise CorruptSessionError(
            f"session file {path} was corrupt ({exc}); it was moved to {aside}", aside
        ) from None


def _decode_file(path: Path) -> Record:
    """The one reader of the session file: a regular file's, and at most MAX_FILE_SIZE bytes.

    FileNotFoundError if there is none; SessionStoreError for a FIFO, device, socket or
    directory (a link to one too), which is left alone; CorruptSessionError for the rest.
    """
    return decode_bounded(_read_bounded(path), str(path))


def decode_bounded(data: bytes, where: str) -> Record:
    """A session file's bytes, however read, judged as the file's are: at most MAX_FILE_SIZE,
    of a version we know (else UnsupportedVersionError, naming ``where``), else corrupt."""
    with _judged(data, where):
        return decode(data)


@contextlib.contextmanager
def _judged(data: bytes, where: str) -> Iterator[None]:
    """Decoding ``data`` as ``decode_bounded`` does: its size checked first, its errors
    told as the file's."""
    if len(data) > MAX_FILE_SIZE:
        raise CorruptSessionError(f"larger than {MAX_FILE_SIZE} bytes")
    try:
        yield
    except UnsupportedVersionError as exc:
        raise UnsupportedVersionError(f"{where}: {exc}; the file is left as it is") from None
    except RecursionError:  # json's parser recurses once per nested array or object
        raise CorruptSessionError("nested too deeply to parse") from None


def _read_bounded(path: Path) -> bytes:
    """A regular file's bytes, up to one chunk past MAX_FILE_SIZE.

    A FIFO would block the open (holding the lock) and a device may read without end, or do
    something on open, so the stat refuses them unopened; the fstat then checks what was
    opened, should the file have been swapped between the two.
    """
    _refuse_unless_regular(path, os.stat(path).st_mode)
    fd = os.open(path, _READ_FLAGS)
    try:
        opened = os.fstat(fd)
        _refuse_unless_regular(path, opened.st_mode)
        return _read_at_most(fd, MAX_FILE_SIZE, opened.st_size)
    finally:
        os.close(fd)


def _read_at_most(fd: int, limit: int, expected: int) -> bytes:
    """Read to the end, or stop once past ``limit``: the size may lie (/proc), or grow."""
    chunks = []
    total = 0
    size = max(_CHUNK, min(expected, limit) + 1)  # usually one read, and one that finds the end
    while total <= limit:
        chunk = os.read(fd, size)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        size = _CHUNK
    return b"".join(chunks)


def _refuse_unless_regular(path: Path, mode: int) -> None:
    """Refuse anything but a regular file, saying what it is; it is not ours to move aside."""
    if stat.S_ISREG(mode):
        return
    what = describe(mode)
    if os.path.islink(path):
        what = f"a symbolic link to {what}"
    raise SessionStoreError(
        f"session file {path} is {what}, not a regular file; it was left as it is"
    )


def _quarantine(path: Path, now: datetime) -> Path:
    """Move a corrupt file aside under a name that nothing else has; never delete it."""
    stem = f"{path.name}.corrupt-{now:%Y%m%dT%H%M%S}.{now.microsecond // 1000:03d}Z"
    aside = path.with_name(stem)
    number = 0
    # lexists: a link to nothing has the name too. We hold the lock: no one else names one now.
    while os.path.lexists(aside):
        number += 1
        aside = path.with_name(f"{stem}-{number}")
    path.rename(aside)
    return aside


def _write_atomic(where: _Where, data: Sequence[bytes], size: int) -> None:
    """Write a fresh temp file, fsync it, and replace the session file with it (the caller
    then syncs the directory: ``_sync_directory``).

    ``data`` is the file's bytes in parts, ``size`` in all. A session over MAX_FILE_SIZE is
    refused: the next read would only quarantine it.
    """
    path = where.path
    if size > MAX_FILE_SIZE:
        raise SessionStoreError(
            f"cannot write session file {path}: the session would be {size} bytes, "
            f"over the {MAX_FILE_SIZE}-byte limit"
        )
    temp = f"{where.temp}{secrets.token_hex(8)}.tmp"
    try:
        write_new(temp, data)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def _sync_directory(where: _Where) -> None:
    """Make a replace of the session file durable; a failure is only logged."""
    try:
        fsync_directory(where.directory)
    except OSError as exc:  # the write has landed: failing it now would count it twice
        logger.warning(
            "wrote %s but could not sync its directory (%s): a power loss may undo that write",
            where.path,
            exc.strerror or exc,
        )


def write_new(temp: str | os.PathLike[str], data: bytes | Sequence[bytes]) -> None:
    """Create ``temp`` (never an existing name, never through a link), 0600 whatever the
    umask, holding ``data`` (bytes, or its parts in order) synced to disk: the first half of
    an atomic replace."""
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, _FILE_MODE)
    try:
        if hasattr(os, "fchmod"):  # the umask may have narrowed the mode
            os.fchmod(fd, _FILE_MODE)
        if isinstance(data, bytes):
            _write_all(fd, data)
        else:
            _write_parts(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_parts(fd: int, parts: Sequence[bytes]) -> None:
    """Write ``parts`` in order with as few system calls as may be, and no join: joining a
    whole file copies it, holding the GIL."""
    if not hasattr(os, "writev"):  # Windows
        _write_all(fd, b"".join(parts))
        return
    start = 0
    while start < len(parts):
        batch = parts[start : start + _IOV_MAX]
        written = os.writev(fd, batch)
        if written == sum(map(len, batch)):
            start += len(batch)
            continue
        for part in batch:  # a short write: find where it stopped, and go on from there
            start += 1
            if written < len(part):
                _write_all(fd, memoryview(part)[written:])
                break
            written -= len(part)


def fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX; Windows has no directory handles to sync)."""
    if sys.platform == "win32":
        return
    fd = os.open(directory, _DIRECTORY_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_temp_files(directory: Path, name: str) -> None:
    """Delete temp files of writers that died mid-write: only a lock holder writes them.

    Only regular files with a name that this library alone gives, so never a neighbour's
    (``session.json.work``'s in-flight temp files, say). A failure is logged, never raised:
    it must not fail the write that follows.
    """
    try:
        with os.scandir(directory) as entries:
            stale = [e for e in entries if _is_our_temp_name(e.name, name)]
    except OSError as exc:
        _report(f"cannot look for stale temp files in {directory}: {exc.strerror or exc}")
        return
    for entry in stale:
        try:
            if not entry.is_file(follow_symlinks=False):  # we only ever create regular files
                _report(
                    f"{entry.path} has the name of an aiosessionstore temp file, but is not a "
                    "regular file; left alone"
                )
                continue
            os.unlink(entry.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            _report(f"cannot remove stale temp file {entry.path}: {exc.strerror or exc}")


def _is_our_temp_name(name: str, session_name: str) -> bool:
    return name.startswith(session_name) and bool(_TEMP_SUFFIX.fullmatch(name, len(session_name)))


def _report(message: str) -> None:
    """Log a cleanup problem once per process: it changes nothing for the session file."""
    if message not in _reported:
        _reported.add(message)
        logger.warning("%s", message)


def peek(path: Path) -> Record:
    """The session on disk for a reader that must change nothing: no lock, no directory.

    No lock is needed because writers replace the file atomically, so a read sees one whole
    version. A corrupt file stays where it is, for a writer to move aside.
    """
    with _translated_errors(path):
        try:
            return _decode_file(path)
        except FileNotFoundError:
            raise SessionNotFoundError(f"no session file at {path}") from None
        except CorruptSessionError as exc:
            raise CorruptSessionError(
                f"session file {path} is corrupt ({exc}); it was left in place"
            ) from None


class FileBackend:
    """A session in one JSON file, as the TypeScript tool keeps it, shared by every process
    on the machine through a lock file beside it (``session.json.lock``)."""

    def __init__(self, path: str | os.PathLike[str], lock_timeout: float = 10.0) -> None:
        self.path = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
        self.lock_timeout = lock_timeout
        self.description = f"session file {self.path}"
        #: What this backend last wrote, so that a flush parses and encodes only what changed.
        self._written = Written()

    def __repr__(self) -> str:
        return f"FileBackend({str(self.path)!r})"

    def open(self, change: Change) -> Record:
        return open_session(self.path, change, self.lock_timeout, self._written)

    def commit(self, change: Change) -> Record:
        return commit(self.path, change, self.lock_timeout, self._written)

    def read(self) -> Record:
        return read(self.path, self.lock_timeout)

    def peek(self) -> Record:
        return peek(self.path)

    def remove(self) -> bool:
        self._written.last = None  # nothing to hold on to for a session being deleted
        return remove(self.path, self.lock_timeout)

    def close(self) -> None:
        pass  # a transaction holds nothing open once done
