"""The inter-process lock: flock(2) on POSIX, filelock where there is no fcntl (Windows)."""

from __future__ import annotations

import os
import socket
import stat
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from aiosessionstore import LockTimeoutError, SessionStoreError, _lock

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
