"""The inter-process lock: an exclusive lock on a lock file beside the session file.

On POSIX it is flock(2) on a descriptor of our own: about 4 µs, where filelock's acquire and
release run some 1,100 Python calls (about 120 µs holding the GIL, which an event loop waiting
on the GIL feels). Windows uses filelock. Either way the lock file is never deleted, so two
processes can never each hold "the" lock on two different files of the same name.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from ._errors import LockTimeoutError, SessionStoreError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ("held",)

_FLAGS = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)

#: Descriptors that hold a lock right now. A forked child gets copies, and a copy keeps an
#: flock held after the parent lets go, so the child closes them at once.
_held: set[int] = set()


@contextlib.contextmanager
def held(path: Path, timeout: float) -> Iterator[None]:
    """Hold the lock file ``path`` exclusively; LockTimeoutError after ``timeout`` seconds."""
    if path.is_symlink():  # O_NOFOLLOW refuses it too; this says what to do about it
        raise SessionStoreError(f"lock file {path} is a symbolic link; remove it")
    if fcntl is None:  # Windows
        with _filelock(path, timeout):
            yield
        return
    fd = os.open(path, _FLAGS, 0o600)
    try:
        _acquire(fd, path, timeout)
        _held.add(fd)
        try:
            yield
        finally:
            _held.discard(fd)
    finally:
        os.close(fd)  # which releases the lock


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
    for fd in _held:
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_copies_in_child)
