"""The inter-process lock: flock(2) on POSIX, filelock where there is no fcntl (Windows);
on Linux, waits queue first come first served (real processes, real locks)."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from aiosessionstore import LockTimeoutError, SessionStoreError, _lock

from .conftest import start_worker, wait_for_line

BACKENDS = ["flock", "filelock"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run each test with flock, and with the Windows path (filelock) on this machine too."""
    if request.param == "filelock":
        pytest.importorskip("filelock")
        monkeypatch.setattr(_lock, "fcntl", None)
    return str(request.param)


class TestHeld:
    def test_excludes_a_second_holder_until_released(self, tmp_path: Path, backend: str) -> None:
        """While one holder has the lock, another times out; after release it gets it."""
        path = tmp_path / "session.json.lock"
        holding, release = threading.Event(), threading.Event()

        def hold() -> None:
            with _lock.held(path, timeout=5):
                holding.set()
                release.wait(10)

        holder = threading.Thread(target=hold)
        holder.start()
        try:
            assert holding.wait(10)
            with pytest.raises(LockTimeoutError, match="timed out"), _lock.held(path, 0.05):
                pass
        finally:
            release.set()
            holder.join()
        with _lock.held(path, timeout=1):
            pass

    def test_the_lock_file_stays(self, tmp_path: Path, backend: str) -> None:
        """Releasing never deletes the lock file: a deleted one lets two holders in at once."""
        path = tmp_path / "session.json.lock"
        with _lock.held(path, timeout=1):
            pass
        assert path.exists()


def within(seconds: float, action: Callable[[], None]) -> BaseException | None:
    """Run ``action`` on a thread of its own: its exception, or a failure if it hangs."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            action()
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=run, daemon=True)  # a hung one must not block the exit
    thread.start()
    thread.join(seconds)
    assert outcome, f"still running after {seconds} s"
    return outcome[0]


def take(path: Path) -> None:
    with _lock.held(path, timeout=1):
        pass


def bind_socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))


def null_device(path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # as /dev/null


#: What the lock file's path may be instead of a file, and the kind the refusal names.
NOT_FILES: dict[str, tuple[Callable[[Path], None], str]] = {
    "fifo": (os.mkfifo, "FIFO"),
    "directory": (Path.mkdir, "directory"),
    "socket": (bind_socket, "socket"),
    "character device": (null_device, "character device"),
}


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file types")
class TestNotARegularFile:
    @pytest.mark.parametrize("name", NOT_FILES)
    def test_is_refused_and_left_alone(self, tmp_path: Path, backend: str, name: str) -> None:
        """A lock path that is not a regular file is refused at once, and not touched."""
        make, kind = NOT_FILES[name]
        path = tmp_path / "session.json.lock"
        make(path)
        before = os.lstat(path)
        error = within(30, lambda: take(path))
        assert isinstance(error, SessionStoreError)
        assert str(error) == f"lock file {path} is a {kind}, not a regular file; remove it"
        after = os.lstat(path)
        assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)

    def test_a_link_is_refused_whatever_it_points_to(self, tmp_path: Path, backend: str) -> None:
        """As before: a link is refused as a link, and its target (a FIFO here) left alone."""
        target = tmp_path / "fifo"
        os.mkfifo(target)
        path = tmp_path / "session.json.lock"
        path.symlink_to(target)
        error = within(30, lambda: take(path))
        assert isinstance(error, SessionStoreError)
        assert str(error) == f"lock file {path} is a symbolic link; remove it"
        assert stat.S_ISFIFO(os.lstat(target).st_mode)


@pytest.fixture
def queued(tmp_path: Path) -> Path:
    """A lock file where waits queue: Linux, on a file system whose flock is its own lock."""
    if not _lock._QUEUED:
        pytest.skip("waits queue on Linux only")
    path = tmp_path / "session.json.lock"
    with _lock.held(path, timeout=5):  # a process's first acquisition there finds out
        pass
    if not _lock._stands_alone[os.stat(path).st_dev]:
        pytest.skip("flock here is a byte-range lock in disguise (NFS?): waits are unqueued")
    return path


def say_to(worker: subprocess.Popen[str], line: str) -> None:
    assert worker.stdin is not None
    worker.stdin.write(line + "\n")
    worker.stdin.flush()


def in_line(path: Path, timeout: float, log: Path | str = "-") -> subprocess.Popen[str]:
    """A process that has taken the lock once, alone, and will queue for it at "take"."""
    return start_worker("queue-for-the-lock", path, timeout, log)


def queue_up(worker: subprocess.Popen[str], *lines: str) -> None:
    say_to(worker, "take")
    for line in lines:
        wait_for_line(worker, line)


def ready(*workers: subprocess.Popen[str]) -> None:
    for worker in workers:
        wait_for_line(worker, "ready")


class TestQueue:
    def test_processes_get_the_lock_in_the_order_they_queued(
        self, queued: Path, tmp_path: Path
    ) -> None:
        """Five processes that queue one after another behind a holder get it in that order."""
        log = tmp_path / "order"
        holder = in_line(queued, 30)
        waiters = [in_line(queued, 30, log) for _ in range(5)]
        ready(holder, *waiters)
        queue_up(holder, "queued", "got")
        for waiter in waiters:
            queue_up(waiter, "queued")
        say_to(holder, "release")
        for waiter in waiters:
            wait_for_line(waiter, "got")
            wait_for_line(waiter, "released")
        assert log.read_text().split() == [str(waiter.pid) for waiter in waiters]

    def test_a_queued_process_killed_does_not_hold_up_the_next(self, queued: Path) -> None:
        """The kernel drops a SIGKILLed waiter's place, so the one behind it still gets the lock."""
        holder, killed, behind = in_line(queued, 30), in_line(queued, 30), in_line(queued, 30)
        ready(holder, killed, behind)
        queue_up(holder, "queued", "got")
        queue_up(killed, "queued")
        queue_up(behind, "queued")
        killed.kill()
        killed.communicate()
        say_to(holder, "release")
        wait_for_line(behind, "got")

    def test_a_wait_that_times_out_in_the_queue_lets_the_next_one_go(self, queued: Path) -> None:
        """A queued wait past lock_timeout raises LockTimeoutError; the one queued behind it gets
        the lock once the holder lets go, while the one that gave up still runs."""
        holder, late, behind = in_line(queued, 30), in_line(queued, 1), in_line(queued, 30)
        ready(holder, late, behind)
        queue_up(holder, "queued", "got")
        queue_up(late, "queued")
        queue_up(behind, "queued")
        behind_queued = time.monotonic()
        assert late.stdout is not None
        line = late.stdout.readline().removeprefix("timed out ")
        timed_out, waited, message = line.split(" ", 2)
        assert behind_queued < float(timed_out), "queued behind a wait already over: too slow"
        assert 1.0 <= float(waited) < 1.0 + 10, "lock_timeout kept neither early nor (much) late"
        assert message == (
            f"timed out after 1.0 s waiting for the lock on {queued}: another process holds it, "
            "or waits for it ahead of this one\n"
        )
        say_to(holder, "release")
        wait_for_line(behind, "got")
        assert late.poll() is None
        say_to(late, "check")  # its abandoned wait in the kernel, now granted, let go and ended
        wait_for_line(late, "closed")

    @pytest.mark.skipif(not Path("/proc/locks").is_file(), reason="needs Linux's /proc/locks")
    def test_a_queued_wait_blocks_in_the_kernel(self, queued: Path) -> None:
        """A process queued behind another waits in F_OFD_SETLKW (a blocked request in
        /proc/locks) rather than polling, so it costs the holder no CPU."""
        holder, waiter = in_line(queued, 30), in_line(queued, 30)
        ready(holder, waiter)
        queue_up(holder, "queued", "got")
        queue_up(waiter, "queued")
        inode = f":{os.stat(queued).st_ino} "
        deadline = time.monotonic() + 30
        while not any(  # the waiter's helper enters the system call just after "queued"
            "->" in line and "OFDLCK" in line and inode in line
            for line in Path("/proc/locks").read_text().splitlines()
        ):
            assert time.monotonic() < deadline, "no blocked queue lock: the wait polls"
            assert waiter.poll() is None
        say_to(holder, "release")
        wait_for_line(waiter, "got")

    def test_a_child_forked_mid_queue_keeps_no_place(self, queued: Path) -> None:
        """A child forked while its parent waits in the queue closes its copies of the parent's
        descriptors, the one its wait blocks on too: once the parent is killed, its place is
        gone and the one queued behind it gets the lock when the holder lets go."""
        holder = in_line(queued, 30)
        forker = start_worker("fork-in-the-queue", queued)
        behind = in_line(queued, 20)
        ready(holder, forker, behind)
        queue_up(holder, "queued", "got")
        say_to(forker, "take")
        assert forker.stdout is not None
        line = forker.stdout.readline()
        assert line.startswith("forked "), line
        child = int(line.split()[1])
        try:
            queue_up(behind, "queued")
            forker.kill()
            forker.communicate()
            say_to(holder, "release")
            wait_for_line(behind, "got")
        finally:
            os.kill(child, signal.SIGKILL)

    def test_an_unqueued_holder_still_excludes(self, queued: Path) -> None:
        """A plain flock, as earlier versions take it, keeps a queued process out until let go."""
        import fcntl

        refused, waiting = in_line(queued, 0.2), in_line(queued, 30)
        ready(refused, waiting)
        fd = os.open(queued, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            queue_up(refused, "queued")
            assert refused.stdout is not None
            assert refused.stdout.readline().startswith("timed out ")
            queue_up(waiting, "queued")
        finally:
            os.close(fd)
        wait_for_line(waiting, "got")

    def test_mutual_exclusion_under_contention(self, queued: Path, tmp_path: Path) -> None:
        """Six processes each add 1 to a file 150 times under the lock only: exactly 900."""
        counter = tmp_path / "counter"
        counter.write_text("0")
        workers = [start_worker("count-under-the-lock", queued, counter, 150) for _ in range(6)]
        ready(*workers)
        for worker in workers:
            say_to(worker, "go")
        for worker in workers:
            _, err = worker.communicate(timeout=120)
            assert worker.returncode == 0, err
        assert counter.read_text() == "900"

    def test_a_child_forked_while_holding_keeps_no_place(self, queued: Path) -> None:
        """A child forked while its parent holds the lock and its ticket keeps neither: the
        next one in the queue gets the lock as soon as the parent lets go."""
        worker = start_worker("fork-while-queued", queued)
        wait_for_line(worker, "released")
        with _lock.held(queued, timeout=5):
            pass
        _, err = worker.communicate(timeout=30)  # which kills the child
        assert worker.returncode == 0, err

    def test_a_stopped_waiter_does_not_hold_up_the_next(self, queued: Path) -> None:
        """A waiter stopped (SIGSTOP) in the queue keeps its place, but the one behind it takes
        the flock once it is free rather than waiting for the stopped one's turn."""
        holder, stopped, behind = in_line(queued, 30), in_line(queued, 30), in_line(queued, 30)
        ready(holder, stopped, behind)
        queue_up(holder, "queued", "got")
        queue_up(stopped, "queued")
        os.kill(stopped.pid, signal.SIGSTOP)
        try:
            queue_up(behind, "queued")
            say_to(holder, "release")
            wait_for_line(behind, "got")  # it would say "timed out" after 30 s
            say_to(behind, "release")
            wait_for_line(behind, "released")
        finally:
            os.kill(stopped.pid, signal.SIGCONT)
        wait_for_line(stopped, "got")  # its turn came long ago; the flock is free again

    def test_a_mutex_held_for_good_leaves_the_waits_unqueued(self, queued: Path) -> None:
        """The ticket mutex held by a process that never lets go (one stopped while taking a
        ticket) costs a wait a moment and its place in the queue, never the lock itself."""
        import fcntl

        stuck = _lock._open(queued)
        try:
            _lock._set(stuck, fcntl.F_WRLCK, _lock._MUTEX)  # as that process holds it
            count = queued.read_bytes()
            with _lock.held(queued, timeout=30):  # LockTimeoutError after 30 s, before
                pass
            assert queued.read_bytes() == count  # no ticket taken
        finally:
            _lock._close(stuck)

    def test_the_helper_threads_are_bounded(self, queued: Path) -> None:
        """Waits stuck behind a ticket that is never let go (while the count is lost again
        and again) start at most _MOST_HELPERS threads; the waits past them are unqueued."""
        import fcntl

        holder = _lock._open(queued)
        try:
            fcntl.flock(holder, fcntl.LOCK_EX)
            assert _lock._take_ticket(holder, time.monotonic() + 1) >= _lock._BASE
            for _ in range(2 * _lock._MOST_HELPERS):
                queued.write_bytes(b"")  # the count lost: the next ticket follows the stuck one
                with pytest.raises(LockTimeoutError), _lock.held(queued, timeout=0.01):
                    pass
            helpers = [t for t in threading.enumerate() if t.name == "aiosessionstore-queue"]
            assert len(helpers) <= _lock._MOST_HELPERS
        finally:
            _lock._close(holder)  # the helpers' waits are granted, and they go idle

    def test_a_lost_count_skips_tickets_still_held(self, queued: Path) -> None:
        """A count lost while a ticket is held (as an O_TRUNC open by filelock 3 loses it) gives
        the next process the next free ticket, not the held one."""
        queued.write_bytes(b"")  # the count starts at 0
        first = _lock._open(queued)
        second = _lock._open(queued)
        try:
            assert _lock._take_ticket(first, time.monotonic() + 1) == _lock._BASE
            os.truncate(queued, 0)
            assert _lock._take_ticket(second, time.monotonic() + 1) == _lock._BASE + 1
        finally:
            _lock._close(first)
            _lock._close(second)

    def test_a_garbled_count_is_started_over(self, queued: Path) -> None:
        """Whatever else the lock file holds, the lock is taken and the count written anew."""
        queued.write_bytes(b"\xff" * 100)
        with _lock.held(queued, timeout=5):
            pass
        assert queued.read_bytes()[: len(_lock._MAGIC)] == _lock._MAGIC

    def test_where_flock_is_a_byte_range_lock_nothing_queues(
        self, queued: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """On a file system found to emulate flock with byte-range locks, no queue lock is taken
        (it would block the flock): the lock file is left as it was."""
        queued.write_bytes(b"")
        monkeypatch.setitem(_lock._stands_alone, os.stat(queued).st_dev, False)
        with _lock.held(queued, timeout=5):
            pass
        assert queued.read_bytes() == b""
