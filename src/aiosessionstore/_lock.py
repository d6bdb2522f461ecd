"""The inter-process lock: an exclusive lock on a lock file beside the session file.

On POSIX it is flock(2) on a descriptor of our own: about 4 µs, where filelock's acquire and
release run some 1,100 Python calls (about 120 µs holding the GIL, which an event loop waiting
on the GIL feels). Windows uses filelock. Either way the lock file is never deleted, so two
processes can never each hold "the" lock on two different files of the same name.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from ._errors import LockTimeoutError, SessionStoreError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ("describe", "held")

#: O_NONBLOCK and O_NOCTTY: should a FIFO or a terminal replace the file between our check and
#: the open, the open must neither wait for a writer nor take a controlling terminal.
_FLAGS = (
    os.O_RDWR
    | os.O_CREAT
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOCTTY", 0)
)

_KINDS = (
    (stat.S_ISDIR, "directory"),
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISLNK, "symbolic link"),
)

#: Our open lock-file descriptors, held or still waiting. A forked child gets copies, and a
#: copy keeps an flock held after the parent lets go (also one the parent takes only after
#: the fork, on the same open file), so the child closes them at once. Opening and recording
#: a descriptor is one step under ``_opening``, which a fork waits for.
_open_fds: set[int] = set()
_opening = threading.Lock()


@contextlib.contextmanager
def held(path: Path, timeout: float) -> Iterator[None]:
    """Hold the lock file ``path`` exclusively; LockTimeoutError after ``timeout`` seconds."""
    _check_before_open(path)
    if fcntl is None:  # Windows
        with _filelock(path, timeout):
            yield
        return
    with _opening:
        fd = os.open(path, _FLAGS, 0o600)
        _open_fds.add(fd)
    try:
        mode = os.fstat(fd).st_mode
        _refuse_unless_regular(path, mode)  # what we opened, whatever raced
        if mode & 0o600 != 0o600:  # made under a umask such as 0277: the next open would fail
            with contextlib.suppress(OSError):  # another user's file: theirs to fix
                os.fchmod(fd, 0o600)
        _acquire(fd, path, timeout)
        yield
    finally:
        with _opening:
            _open_fds.discard(fd)
            os.close(fd)  # which releases the lock


def describe(mode: int) -> str:
    """What a file of this ``st_mode`` is, for a message: "a FIFO", "a directory"."""
    for test, kind in _KINDS:
        if test(mode):
            return f"a {kind}"
    return f"a file of type {stat.S_IFMT(mode):#o}"


def _check_before_open(path: Path) -> None:
    """Refuse a link, or anything but a regular file, before opening it.

    O_NOFOLLOW would refuse a link too; this says what to do about it. A FIFO or a device is
    not even opened: opening one may block, or do something of its own.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return  # the open creates it
    if stat.S_ISLNK(mode):
        raise SessionStoreError(f"lock file {path} is a symbolic link; remove it")
    _refuse_unless_regular(path, mode)


def _refuse_unless_regular(path: Path, mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise SessionStoreError(
            f"lock file {path} is {describe(mode)}, not a regular file; remove it"
        )


def _acquire(fd: int, path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise LockTimeoutError(
                    f"timed out after {timeout} s waiting for the lock on {path}: "
                    "another process holds it"
                ) from None
            time.sleep(delay)  # a worker thread: this blocks no event loop
            delay = min(delay * 2, 0.02)


@contextlib.contextmanager
def _filelock(path: Path, timeout: float) -> Iterator[None]:
    import filelock

    lock = filelock.FileLock(path, timeout=timeout, mode=0o600, preserve_lock_file=True)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise LockTimeoutError(f"timed out waiting for the lock on {path}") from None
    try:
        yield
    finally:
        lock.release()


def _close_copies_in_child() -> None:
    for fd in _open_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    _open_fds.clear()
    _opening.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_opening.acquire,
        after_in_parent=_opening.release,
        after_in_child=_close_copies_in_child,
    )
