"""Disk full, read-only, permission denied, a held lock: an error, and the counts kept."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from aiosessionstore import AsyncSessionStore, LockTimeoutError, SessionStoreError

from .conftest import read_json

pytestmark = pytest.mark.anyio


def raising(number: int) -> Any:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise OSError(number, os.strerror(number))

    return fail


class TestInjectedFaults:
    @pytest.mark.parametrize(
        ("call", "number"),
        [("fsync", errno.ENOSPC), ("replace", errno.EROFS), ("open", errno.EACCES)],
    )
    async def test_a_failed_write_raises_chained_and_keeps_everything(
        self, session_path: Path, monkeypatch: pytest.MonkeyPatch, call: str, number: int
    ) -> None:
        """The error names the OS's reason; the old file, and the pending counts, survive."""
        async with AsyncSessionStore(session_path) as store:
            await store.increment_tool_calls(2)
            await store.flush()
            await store.increment_tool_calls(3)
            with monkeypatch.context() as patch:
                patch.setattr(os, call, raising(number))
                with pytest.raises(SessionStoreError, match=os.strerror(number)) as caught:
                    await store.flush()
            assert isinstance(caught.value.__cause__, OSError)
            assert caught.value.__cause__.errno == number
            assert (await anyio.to_thread.run_sync(read_json, session_path))["stats"][
                "toolCalls"
            ] == 2
            assert store.session.stats.tool_calls == 5
            leftovers = sorted(p.name for p in session_path.parent.iterdir())
            assert leftovers == ["session.json", "session.json.lock"]
        assert read_json(session_path)["stats"]["toolCalls"] == 5


def mount(*arguments: str) -> None:
    subprocess.run(["mount", *arguments], check=True, capture_output=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 64 KiB tmpfs, where the test may mount one (root on Linux); else skipped."""
    if sys.platform != "linux" or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root on Linux")
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    try:
        mount("-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mountpoint))
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill(directory: Path) -> Path:
    """Write until the disk is full; return the filler file."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as file:
        try:
            while True:
                file.write(b"\0" * 512)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    return filler


class TestRealFaults:
    async def test_a_full_disk(self, small_disk: Path) -> None:
        """ENOSPC on a real tmpfs: flush fails, counts wait, and land once space is freed."""
        path = small_disk / "session.json"
        async with AsyncSessionStore(path) as store:
            filler = await anyio.to_thread.run_sync(fill, small_disk)
            await store.increment_errors(4)
            with pytest.raises(SessionStoreError, match="No space left") as caught:
                await store.flush()
            assert isinstance(caught.value.__cause__, OSError)
            assert read_json(path)["stats"]["errors"] == 0
            await anyio.Path(filler).unlink()
        assert read_json(path)["stats"]["errors"] == 4

    async def test_a_read_only_filesystem(self, small_disk: Path) -> None:
        """EROFS on a real remount: flush fails, and succeeds once the disk is writable."""
        path = small_disk / "session.json"
        async with AsyncSessionStore(path) as store:
            await store.increment_prompt_calls(6)
            mount("-o", "remount,ro", str(small_disk))
            try:
                with pytest.raises(SessionStoreError, match="Read-only file system"):
                    await store.flush()
                assert store.session.stats.prompt_calls == 6
            finally:
                mount("-o", "remount,rw", str(small_disk))
        assert read_json(path)["stats"]["promptCalls"] == 6


class TestHeldLock:
    async def test_a_lock_held_by_another_process_times_out(self, session_path: Path) -> None:
        """A flush waits lock_timeout for another process's lock, then fails; counts kept."""
        async with AsyncSessionStore(session_path, lock_timeout=0.2) as store:
            await store.increment_tool_calls(8)
            holder = await anyio.open_process(
                [sys.executable, "-c", HOLD_LOCK, str(session_path) + ".lock"]
            )
            try:
                assert holder.stdout is not None
                said = b""
                while not said.endswith(b"\n"):  # a pipe may deliver the line in pieces
                    said += await holder.stdout.receive()
                assert said == b"held\n"
                with pytest.raises(LockTimeoutError, match="another process holds"):
                    await store.flush()
            finally:
                holder.kill()
                await holder.aclose()
            assert store.session.stats.tool_calls == 8
        assert read_json(session_path)["stats"]["toolCalls"] == 8


HOLD_LOCK = """
import sys, filelock
lock = filelock.FileLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
sys.stdin.read()
"""
