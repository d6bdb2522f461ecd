"""The inter-process lock: an exclusive lock on a lock file beside the session file.

On POSIX it is flock(2) on a descriptor of our own: about 4 µs, where filelock's acquire and
release run some 1,100 Python calls (about 120 µs holding the GIL, which an event loop waiting
on the GIL feels). Windows uses filelock. Either way the lock file is never deleted, so two
processes can never each hold "the" lock on two different files of the same name.

On Linux the waits for the flock queue, first come first served, in front of it: a polled
flock goes to whoever polls at the right moment (a process that lets go and flushes again
at once, mostly), and a blocking one to whichever waiter the scheduler runs first, since the
kernel wakes them all; so a wait could last a second where its turn came after a few
milliseconds. The queue is made of open-file-description byte-range locks on the same lock
file (F_OFD_SETLK, independent of flock on a local file system, dropped by the kernel with
the process that holds them):

- Byte 0 is a mutex, held while a ticket is taken. The file's first 16 bytes say which
  ticket is next (``_MAGIC`` and 8 bytes little-endian); anything else there counts as 0.
- Ticket ``t`` is a lock on byte ``_BASE + t``, held from taking the ticket to after the
  flock is let go. Its holder takes the flock only once ticket ``t - 1`` is let go of; so
  every acquisition queues, also the next one of the process that just let go.
- A ticket found held (the count was lost: a truncated or rewritten file) is skipped.
- The wait for ticket ``t - 1`` blocks in the kernel (F_OFD_SETLKW on its byte), in a helper
  thread, so that ``timeout`` still holds: a waiter takes no CPU from the holder, and is woken
  alone, when its turn comes.

Mutual exclusion rests on the flock alone: the queue only orders the attempts. A waiter
that dies, times out or finds the count wrong only lets its successor contend for the flock
sooner, which it then polls as before. A process stopped (SIGSTOP, a frozen cgroup) must not
stall the others while the flock is free: a waiter tries the flock every ``_TRY_EVERY`` while
its turn has not come, and takes it when free twice in a row (one stopped in the queue ahead
of it keeps its place for good); and a mutex held past ``_MUTEX_PATIENCE`` (its holder
stopped while taking a ticket) leaves that wait unqueued, as do ``_MOST_HELPERS`` helper
threads all busy. Earlier versions, which
only take the flock, still exclude, merely unqueued. Where flock(2) is itself a byte-range
lock in disguise (NFS emulates it so), the two would block each other: the first acquisition
in a process on a file system checks for that, under the flock, and a file system where it
is so is never queued on.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import stat
import struct
import sys
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

#: Whether waits queue: Linux's open-file-description locks, through a struct flock whose
#: offsets are 64 bits (a 64-bit build).
_QUEUED = (
    sys.platform.startswith("linux")
    and fcntl is not None
    and hasattr(fcntl, "F_OFD_SETLKW")
    and struct.calcsize("P") == 8
)
_MUTEX = 0  # the byte locked while a ticket is taken
_PROBE = 1  # a byte never locked: where our flock would show, were it a byte-range lock
_MAGIC = b"aiossq1\n"  # then the next ticket, 8 bytes little-endian
_RECORD = len(_MAGIC) + 8
_BASE = 1 << 32  # ticket t is the byte at _BASE + t (beyond the end of the file: no matter)
_TICKETS = 1 << 32
_SKIPS = 64  # tickets found held in a row before taking none (and polling as before)
#: How long to try for the mutex before taking no ticket this time: it is held for
#: microseconds, so a longer wait means its holder was stopped (SIGSTOP, a frozen cgroup).
_MUTEX_PATIENCE = 0.1
#: While waiting for its turn, how often a waiter tries the flock anyway: a turn that does not
#: come while the flock is free means that a process queued ahead was stopped.
_TRY_EVERY = 0.1
#: The most helper threads a process keeps; past them a wait is not queued.
_MOST_HELPERS = 8
#: struct flock's l_type, l_whence, l_start and l_len, as every Linux lays them out, then
#: zeros: l_pid must be 0 for these locks, and the kernel reads no further than its struct.
_FLOCK = struct.Struct("@hhqq")
_ZEROS = bytes(32)

#: By st_dev: whether flock(2) there is a lock of its own (True), or shows as a byte-range
#: lock (False: queueing there would deadlock against it). Found by the first acquisition.
_stands_alone: dict[int, bool] = {}


@contextlib.contextmanager
def held(path: Path, timeout: float) -> Iterator[None]:
    """Hold the lock file ``path`` exclusively; LockTimeoutError after ``timeout`` seconds."""
    _check_before_open(path)
    if fcntl is None:  # Windows
        with _filelock(path, timeout):
            yield
        return
    place = _Place(_open(path))
    try:
        status = os.fstat(place.fd)
        _refuse_unless_regular(path, status.st_mode)  # what we opened, whatever raced
        if status.st_mode & 0o600 != 0o600:  # made under a umask such as 0277: the next open
            with contextlib.suppress(OSError):  # would fail; another user's file: theirs to fix
                os.fchmod(place.fd, 0o600)
        _acquire(place, path, status.st_dev, timeout)
        yield
    finally:
        place.leave()


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


def _open(path: Path) -> int:
    with _opening:
        fd = os.open(path, _FLAGS, 0o600)
        _open_fds.add(fd)
    return fd


def _close(fd: int) -> None:
    with _opening:
        _open_fds.discard(fd)
        os.close(fd)


class _Place:
    """A lock-file descriptor and, once it has one, its ticket: what ``held`` lets go of."""

    __slots__ = ("fd", "ticket")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.ticket = -1  #: the offset of our ticket's byte, or -1

    def leave(self) -> None:
        # The flock first, then the ticket, whose release lets our successor go: it should
        # find the flock free. Explicitly, not by the close, which drops the ticket first
        # (and nothing while a forked child still has a copy of the descriptor).
        with contextlib.suppress(OSError):
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        if self.ticket >= 0:
            with contextlib.suppress(OSError):
                _set(self.fd, fcntl.F_UNLCK, self.ticket)
        _close(self.fd)


def _acquire(place: _Place, path: Path, device: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    if _QUEUED:
        stands_alone = _stands_alone.get(device)
        if stands_alone:
            _queue(place, path, timeout, deadline)
        else:
            _poll(place.fd, path, timeout, deadline)
            if stands_alone is None:  # the first time on this file system: while we hold it
                _stands_alone[device] = _flock_stands_alone(path)
        return
    _poll(place.fd, path, timeout, deadline)


def _poll(fd: int, path: Path, timeout: float, deadline: float) -> None:
    """Take the flock, trying every so often (backing off to 20 ms) until ``deadline``."""
    delay = 0.0005
    while not _try_flock(fd):
        if time.monotonic() >= deadline:
            raise _timed_out(path, timeout)
        time.sleep(delay)  # a worker thread: this blocks no event loop
        delay = min(delay * 2, 0.02)


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _timed_out(path: Path, timeout: float, queued: bool = False) -> LockTimeoutError:
    ahead = ", or waits for it ahead of this one" if queued else ""
    return LockTimeoutError(
        f"timed out after {timeout} s waiting for the lock on {path}: "
        f"another process holds it{ahead}"
    )


# -- the queue (Linux) --------------------------------------------------------------------


def _set(fd: int, kind: int, offset: int, command: int | None = None) -> bytes:
    """One F_OFD_SETLK (or ``command``) of ``kind`` on the byte at ``offset``."""
    argument = _FLOCK.pack(kind, os.SEEK_SET, offset, 1) + _ZEROS
    return fcntl.fcntl(fd, fcntl.F_OFD_SETLK if command is None else command, argument)


def _try(fd: int, offset: int) -> bool:
    """Lock the byte at ``offset`` for writing if no one else has it locked."""
    try:
        _set(fd, fcntl.F_WRLCK, offset)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _held_by_another(fd: int, offset: int, length: int) -> bool:
    """Whether someone else holds a lock on a byte of the range that excludes a reader."""
    argument = _FLOCK.pack(fcntl.F_RDLCK, os.SEEK_SET, offset, length) + _ZEROS
    found = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, argument)
    return bool(_FLOCK.unpack_from(found)[0] != fcntl.F_UNLCK)


def _flock_stands_alone(path: Path) -> bool:
    """Whether our flock, held now, is invisible to a byte-range lock (so not one itself),
    as seen through an open file of its own (a lock never excludes its own owner)."""
    try:
        fd = _open(path)
        try:
            return not _held_by_another(fd, _PROBE, 1)
        finally:
            _close(fd)
    except OSError:  # no OFD locks in this kernel (before 3.15), or none here
        return False


def _queue(place: _Place, path: Path, timeout: float, deadline: float) -> None:
    """Take a ticket and wait for our turn, then for the flock."""
    try:
        place.ticket = _take_ticket(place.fd, deadline)
    except OSError:  # no lock left in the kernel?: unqueued this time, as before
        place.ticket = -1
    if place.ticket >= 0:
        with contextlib.suppress(OSError):  # unqueued from here on: as before
            _wait_for_turn(place.fd, place.ticket, path, timeout, deadline)
    _poll(place.fd, path, timeout, deadline)  # free at once, but for unqueued holders


def _take_ticket(fd: int, deadline: float) -> int:
    """Take the next ticket: the offset of a byte now locked by ``fd``; -1 if there is none
    to be had (each of the next _SKIPS held, or the mutex held for longer than a running
    process holds it)."""
    delay = 0.00002  # held for microseconds: by a process that runs, unless stopped
    give_up = min(deadline, time.monotonic() + _MUTEX_PATIENCE)
    while not _try(fd, _MUTEX):
        if time.monotonic() >= give_up:
            return -1  # its holder is stopped: unqueued this time, as before
        time.sleep(delay)
        delay = min(delay * 2, 0.001)
    try:
        record = os.pread(fd, _RECORD, 0)
        number = 0
        if len(record) == _RECORD and record.startswith(_MAGIC):
            number = int.from_bytes(record[len(_MAGIC) :], "little") % _TICKETS
        for _ in range(_SKIPS):
            if _try(fd, _BASE + number):
                break
            number = (number + 1) % _TICKETS  # held: the count was lost; past it
        else:
            return -1
        following = ((number + 1) % _TICKETS).to_bytes(8, "little")
        with contextlib.suppress(OSError):  # a full disk: the next finds ours held, and skips it
            os.pwrite(fd, _MAGIC + following, 0)
        return _BASE + number
    finally:
        _set(fd, fcntl.F_UNLCK, _MUTEX)


def _wait_for_turn(fd: int, ticket: int, path: Path, timeout: float, deadline: float) -> None:
    """Wait until the ticket before ours is let go of, blocked in the kernel.

    F_OFD_SETLKW on that ticket's byte, which the kernel grants the moment its holder lets go
    (or dies). That wait has no time limit, so a helper thread waits in it, on a duplicate of
    our descriptor (the same open file, so the same lock owner), while we wait on an event for
    what is left of ``timeout``. Past it we raise, and ``held`` lets go of our ticket (the
    flock is the mutual exclusion: our successor merely contends sooner); the helper, once
    granted, lets go of the byte and closes its duplicate itself (the descriptor a thread is
    blocked on is never closed under it). A waiter that blocks uses no CPU, which the holder
    then has to itself. Every ``_TRY_EVERY`` it tries the flock all the same, and keeps it if
    it was free at the try before too (once could be a hand-over between two others): a
    process stopped in the queue ahead keeps its place, not the lock.
    """
    before = _BASE + (ticket - _BASE - 1) % _TICKETS
    if not _held_by_another(fd, before, 1):
        return
    with _opening:  # a forked child must close its copy too (it would keep the queue lock)
        copy = os.dup(fd)
        _open_fds.add(copy)
    granted = threading.Event()
    try:
        _helpers.run(copy, before, granted)
    except BaseException as exc:
        _close(copy)  # not handed over: ours to close
        if isinstance(exc, RuntimeError):  # no thread to be had: unqueued this time
            return
        raise
    free_before = False
    while not granted.wait(max(0.0, min(deadline - time.monotonic(), _TRY_EVERY))):
        if time.monotonic() >= deadline:
            raise _timed_out(path, timeout, queued=True)
        if not _try_flock(fd):
            free_before = False
        elif free_before:  # free at two tries in a row, our turn not come: one ahead is stopped
            return
        else:  # free at a hand-over, maybe, where the next in line is about to take it
            fcntl.flock(fd, fcntl.LOCK_UN)
            free_before = True


class _Helpers:
    """Daemon threads that wait in F_OFD_SETLKW for waiters, kept for the next wait once
    done; a new one starts when none is free (one is stuck behind a holder that never lets
    go, say). Started lazily: none in a process that never waits in the queue."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.idle = 0
        self.started = 0
        self.requests: queue.SimpleQueue[tuple[int, int, threading.Event]] = queue.SimpleQueue()

    def run(self, copy: int, before: int, granted: threading.Event) -> None:
        """Hand the wait to a free helper, or to a new one; the helper closes ``copy``
        (unless this raises: then nothing was handed over). RuntimeError when there is none
        to be had: _MOST_HELPERS are busy (stuck behind holders that never let go, say)."""
        with self.lock:
            start = self.idle == 0
            if not start:
                self.idle -= 1
            elif self.started >= _MOST_HELPERS:
                raise RuntimeError("every helper thread is busy")
            else:
                self.started += 1
        if start:  # first, so that a failed start leaves no request behind
            try:
                thread = threading.Thread(
                    target=self.serve, name="aiosessionstore-queue", daemon=True
                )
                thread.start()
            except BaseException:
                with self.lock:
                    self.started -= 1
                raise
        self.requests.put((copy, before, granted))

    def serve(self) -> None:
        while True:
            copy, before, granted = self.requests.get()
            try:
                with contextlib.suppress(OSError):
                    _set(copy, fcntl.F_WRLCK, before, fcntl.F_OFD_SETLKW)
                    _set(copy, fcntl.F_UNLCK, before)
            finally:
                granted.set()  # on an error too: the waiter then only contends sooner
                _close(copy)
            with self.lock:
                self.idle += 1


_helpers = _Helpers()


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
    global _helpers
    _helpers = _Helpers()  # the parent's helpers are not in the child
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
