"""Disk full, read-only, permission denied, a held lock, neighbours: an error, or none."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from aiosessionstore import AsyncSessionStore, LockTimeoutError, SessionStoreError, _file

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

    async def test_a_directory_that_cannot_be_synced_after_the_write_counts_once(
        self,
        session_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """The file was replaced, so the write landed: it is logged, not failed and redone."""
        async with AsyncSessionStore(session_path) as store:
            await store.increment_tool_calls(5)
            with monkeypatch.context() as patch:
                patch.setattr(_file, "fsync_directory", raising(errno.EACCES))
                await store.flush()
            assert store.session.stats.tool_calls == 5
        assert read_json(session_path)["stats"]["toolCalls"] == 5
        assert "could not sync its directory" in caplog.text

    async def test_the_directory_is_synced_once_the_lock_is_free(
        self, session_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The rename is made durable after the lock is let go: the next writer need not wait."""
        free_while_syncing: list[bool] = []
        sync = _file.fsync_directory

        def sync_and_try_the_lock(directory: Path) -> None:
            with open(f"{session_path}.lock", "rb") as other:  # another open file description
                try:
                    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    free_while_syncing.append(False)
                else:
                    free_while_syncing.append(True)
            sync(directory)

        async with AsyncSessionStore(session_path) as store:
            await store.increment_tool_calls(5)
            monkeypatch.setattr(_file, "fsync_directory", sync_and_try_the_lock)
            await store.flush()
        assert free_while_syncing == [True]
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


#: Files beside ours that look like temp files but are not this store's.
NEIGHBOURS = [
    "session.json.work.aiosessionstore-0123456789abcdef.tmp",  # a store at session.json.work
    "session.json.work.0123456789abcdef.tmp",  # the same, by an earlier aiosessionstore
    "session.json.bak.tmp",  # a backup tool's
    "session.json.notes.tmp",  # a user's own
    "session.json.tmp",  # the TypeScript tool's, which takes no lock of ours
]

#: Temp files this library writes (and earlier versions wrote), left by a writer that died.
OURS = [
    "session.json.aiosessionstore-0123456789abcdef.tmp",
    "session.json.0123456789abcdef.tmp",
]

#: Counts argv[2] flushes of one increment to a store at argv[1], started on a line on stdin;
#: prints how many failed.
FLUSH_EACH = """
import sys, anyio
from aiosessionstore import AsyncSessionStore, SessionStoreError

async def main(path, count):
    failed = 0
    async with AsyncSessionStore(path, flush_interval=3600, handle_signals=False) as store:
        print("ready", flush=True)
        sys.stdin.readline()
        for _ in range(int(count)):
            await store.increment_tool_calls()
            try:
                await store.flush()
            except SessionStoreError:
                failed += 1
    print(f"failed {failed}")

anyio.run(main, *sys.argv[1:])
"""


async def read_line(process: anyio.abc.Process) -> bytes:
    assert process.stdout is not None
    line = b""
    while not line.endswith(b"\n"):  # a pipe may deliver the line in pieces
        line += await process.stdout.receive()
    return line


def warnings_naming(caplog: pytest.LogCaptureFixture, path: Path) -> list[str]:
    return [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]


async def flush_twice(session_path: Path) -> None:
    async with AsyncSessionStore(session_path) as store:
        for _ in range(2):
            await store.increment_tool_calls()
            await store.flush()
    assert read_json(session_path)["stats"]["toolCalls"] == 2


class TestNeighbours:
    async def test_files_named_like_temp_files_are_left_alone(self, session_path: Path) -> None:
        """Cleanup removes only this library's temp names; the others stay, content and all."""
        await anyio.Path(session_path.parent).mkdir()
        for name in NEIGHBOURS:
            await anyio.Path(session_path.with_name(name)).write_text(name)
        await flush_twice(session_path)
        for name in NEIGHBOURS:
            assert await anyio.Path(session_path.with_name(name)).read_text() == name

    async def test_a_neighbouring_store_in_another_process_never_fails(
        self, session_path: Path
    ) -> None:
        """Stores at session.json and session.json.work flush side by side: none ever fails."""
        await anyio.Path(session_path.parent).mkdir()
        paths = [session_path, session_path.with_name("session.json.work")]
        with anyio.fail_after(60):
            workers = [
                await anyio.open_process([sys.executable, "-c", FLUSH_EACH, str(path), "500"])
                for path in paths
            ]
            try:
                for worker in workers:
                    assert await read_line(worker) == b"ready\n"
                for worker in workers:
                    assert worker.stdin is not None
                    await worker.stdin.send(b"go\n")
                for worker in workers:
                    assert await read_line(worker) == b"failed 0\n"
            finally:
                for worker in workers:
                    await worker.aclose()
        for path in paths:
            assert read_json(path)["stats"]["toolCalls"] == 500

    @pytest.mark.parametrize("name", ["session.json.x.tmp", *OURS])
    async def test_a_directory_named_like_a_temp_file_fails_no_flush(
        self, session_path: Path, name: str
    ) -> None:
        """A directory with a temp file's name, even exactly ours, is not ours: it stays."""
        directory = anyio.Path(session_path.with_name(name))
        await directory.mkdir(parents=True)
        await flush_twice(session_path)
        assert await directory.is_dir()

    @pytest.mark.skipif(sys.platform == "win32", reason="POSIX FIFOs")
    async def test_a_fifo_named_like_our_temp_file_is_left_alone(
        self, session_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """We never make a FIFO, so one with our temp name is someone else's: it is reported."""
        fifo = session_path.with_name(OURS[0])
        await anyio.Path(session_path.parent).mkdir()
        await anyio.to_thread.run_sync(os.mkfifo, fifo)
        await flush_twice(session_path)
        assert stat.S_ISFIFO((await anyio.Path(fifo).lstat()).st_mode)
        assert warnings_naming(caplog, fifo) == [
            f"{fifo} has the name of an aiosessionstore temp file, but is not a regular file; "
            "left alone"
        ]  # once, not at every flush

    async def test_our_own_stale_temp_files_are_removed(self, session_path: Path) -> None:
        """Temp files of a writer that died, of this version or an earlier one, are removed."""
        await anyio.Path(session_path.parent).mkdir()
        for name in OURS:
            await anyio.Path(session_path.with_name(name)).write_text("{")
        await flush_twice(session_path)
        assert sorted(p.name for p in session_path.parent.iterdir()) == [
            "session.json",
            "session.json.lock",
        ]

    async def test_a_store_looks_for_them_again_only_after_a_while(
        self, session_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """After its first write, a store lists the directory at most every SWEEP_EVERY s."""
        monkeypatch.setattr(_file, "SWEEP_EVERY", float("inf"))
        stale = anyio.Path(session_path.with_name(OURS[0]))
        async with AsyncSessionStore(session_path) as store:
            await stale.write_text("{")  # a writer died after this store's first write
            await store.increment_tool_calls()
            await store.flush()
            assert await stale.exists()  # not looked for at this flush
            monkeypatch.setattr(_file, "SWEEP_EVERY", 0.0)
            await store.increment_tool_calls()
            await store.flush()
            assert not await stale.exists()


async def chattr(flag: str, path: Path) -> None:
    await anyio.run_process(["chattr", flag, str(path)])


class TestCleanupNeverFailsAWrite:
    async def test_a_temp_file_that_cannot_be_removed(
        self, session_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An immutable stale temp file (chattr +i) is logged, once, and every flush works."""
        if sys.platform != "linux" or os.geteuid() != 0 or shutil.which("chattr") is None:
            pytest.skip("chattr +i needs root on Linux")
        stuck = session_path.with_name(OURS[0])
        await anyio.Path(session_path.parent).mkdir()
        await anyio.Path(stuck).write_text("{")
        try:
            await chattr("+i", stuck)
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"no immutable files here: {exc.stderr.decode().strip()}")
        try:
            await flush_twice(session_path)
            assert await anyio.Path(stuck).exists()
        finally:
            await chattr("-i", stuck)
        [warning] = warnings_naming(caplog, stuck)
        assert warning.startswith(f"cannot remove stale temp file {stuck}: ")
