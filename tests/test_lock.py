"""The inter-process lock: flock(2) on POSIX, filelock where there is no fcntl (Windows)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from aiosessionstore import LockTimeoutError, _lock

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
