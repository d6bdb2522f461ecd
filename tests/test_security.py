"""Permissions, symbolic links, things that are not files, and where session data may go."""

from __future__ import annotations

import errno
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import anyio
import pytest

from aiosessionstore import AsyncSessionStore, CorruptSessionError, SessionStoreError, _file
from aiosessionstore._codec import decode, encode
from aiosessionstore._session import Record, Session

from .conftest import read_json

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions and links"),
]


@pytest.fixture(params=[0o000, 0o022, 0o077, 0o222, 0o277])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


class TestPermissions:
    async def test_file_0600_and_directory_0700_whatever_the_umask(
        self, session_path: Path, umask: int
    ) -> None:
        """No umask widens or narrows the session file or the directories made for it."""
        nested = session_path.parent / "a" / "b" / "session.json"
        async with AsyncSessionStore(nested) as store:
            await store.increment_tool_calls()
        assert (await anyio.Path(nested).stat()).st_mode & 0o777 == 0o600
        for directory in (session_path.parent, nested.parent.parent, nested.parent):
            assert (await anyio.Path(directory).stat()).st_mode & 0o777 == 0o700
        lock = nested.with_name("session.json.lock")
        assert (await anyio.Path(lock).stat()).st_mode & 0o600 == 0o600

    async def test_a_rewrite_restores_0600(self, session_path: Path) -> None:
        """A file someone widened to 0644 is private again after the next write."""
        async with AsyncSessionStore(session_path) as store:
            await anyio.Path(session_path).chmod(0o644)
            await store.increment_tool_calls()
            await store.flush()
            assert (await anyio.Path(session_path).stat()).st_mode & 0o777 == 0o600

    async def test_a_directory_others_can_write_is_warned_about(
        self, session_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """As ssh does: a world-writable session directory gets a warning with the fix."""
        await anyio.Path(session_path.parent).mkdir()
        await anyio.Path(session_path.parent).chmod(0o777)
        async with AsyncSessionStore(session_path):
            pass
        assert f"chmod 700 {session_path.parent}" in caplog.text

    async def test_a_private_directory_is_not_warned_about(
        self, session_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """No warning where there is nothing to fix."""
        async with AsyncSessionStore(session_path):
            pass
        assert "writable by other users" not in caplog.text


class TestSymbolicLinks:
    async def test_the_lock_file_is_not_opened_through_a_link(
        self, session_path: Path, tmp_path: Path
    ) -> None:
        """A planted lock-file link is refused, and its target left alone."""
        target = tmp_path / "victim"
        target.write_text("precious")
        session_path.parent.mkdir()
        (session_path.parent / "session.json.lock").symlink_to(target)
        with pytest.raises(SessionStoreError, match="symbolic link"):
            async with AsyncSessionStore(session_path):
                pass
        assert target.read_text() == "precious"

    async def test_temp_files_are_created_exclusively(
        self, session_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A link planted at the temp file's name makes the write fail, not follow it."""
        target = tmp_path / "victim"
        target.write_text("precious")
        session_path.parent.mkdir()
        monkeypatch.setattr("aiosessionstore._file.secrets.token_hex", lambda _: "0" * 16)
        (session_path.parent / f"session.json.aiosessionstore-{'0' * 16}.tmp").symlink_to(target)
        with pytest.raises(SessionStoreError, match="File exists"):
            async with AsyncSessionStore(session_path):
                pass
        assert target.read_text() == "precious"


class TestNothingLeaks:
    def test_session_data_goes_only_to_the_session_file(self, session_path: Path) -> None:
        """A run writes nothing to stdout or stderr, and no file but the session and its lock."""
        done = subprocess.run(
            [sys.executable, str(Path(__file__).with_name("workers.py")), "count",
             str(session_path), "10", "3"],
            input="go\n", capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        session_id = read_json(session_path)["sessionId"]
        assert done.stderr == ""
        assert done.stdout.splitlines() == [
            "flushed 3",
            "flushed 6",
            "flushed 9",
            f"session {session_id}",
        ]  # fmt: skip  (the worker's own lines; nothing from the library)
        assert sorted(p.name for p in session_path.parent.iterdir()) == [
            "session.json",
            "session.json.lock",
        ]


#: The read bound the README promises: a session file larger than this is corrupt.
BOUND = 16 * 1024 * 1024

#: Opens a store on argv[1] in a process of its own, its memory capped so that an unbounded
#: read ends in MemoryError instead of taking the machine's, and prints how that ended. With
#: "fifo" as argv[2] it then counts 3, puts a FIFO in the file's place and flushes.
STORE = """
import os, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
import anyio
from aiosessionstore import AsyncSessionStore

async def main(path, then):
    async with AsyncSessionStore(path, handle_signals=False) as store:
        if then == "fifo":
            await store.increment_tool_calls(3)
            os.unlink(path)
            os.mkfifo(path)
            try:
                await store.flush()
            finally:
                print(f"pending {store.session.stats.tool_calls}")
                os.unlink(path)  # so that the closing flush writes them

try:
    anyio.run(main, *sys.argv[1:])
except BaseException as exc:
    print(f"{type(exc).__name__}: {exc}")
else:
    print("opened")
"""


async def in_a_child(path: Path, then: str = "") -> str:
    """How a store on ``path`` fared in a child process; fails, not hangs, after 30 s."""
    with anyio.fail_after(30):
        done = await anyio.run_process([sys.executable, "-c", STORE, str(path), then])
    return done.stdout.decode().strip()


def bind_socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))  # the socket file stays after the socket is closed


def device(kind: int, major: int, minor: int) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        if os.geteuid() != 0:
            pytest.skip("making a device node needs root")
        os.mknod(path, kind | 0o600, os.makedev(major, minor))

    return make


def linked(make: Callable[[Path], None]) -> Callable[[Path], None]:
    """Make the thing elsewhere, and a symbolic link to it at the path."""

    def make_and_link(path: Path) -> None:
        target = path.parent.parent / "elsewhere"
        make(target)
        path.symlink_to(target)

    return make_and_link


def link_to(target: Path) -> Callable[[Path], None]:
    def make_link(path: Path) -> None:
        if not target.exists():
            pytest.skip(f"no {target} here")
        path.symlink_to(target)

    return make_link


def link_to_a_block_device(path: Path) -> None:
    """A link to the first block device in /dev, which the store must refuse unopened."""
    with os.scandir("/dev") as entries:
        for entry in entries:
            if stat.S_ISBLK(entry.stat(follow_symlinks=False).st_mode):
                path.symlink_to(entry.path)
                return
    pytest.skip("no block device in /dev")


#: What a session path may be instead of a file, and the kind the refusal names.
NOT_FILES: dict[str, tuple[Callable[[Path], None], str]] = {
    "fifo": (os.mkfifo, "FIFO"),
    "socket": (bind_socket, "socket"),
    "directory": (Path.mkdir, "directory"),
    "character device": (device(stat.S_IFCHR, 1, 5), "character device"),  # as /dev/zero
    "block device": (device(stat.S_IFBLK, 7, 0), "block device"),  # as /dev/loop0
    "link to a fifo": (linked(os.mkfifo), "symbolic link to a FIFO"),
    "link to a socket": (linked(bind_socket), "symbolic link to a socket"),
    "link to a directory": (linked(Path.mkdir), "symbolic link to a directory"),
    "link to /dev/zero": (link_to(Path("/dev/zero")), "symbolic link to a character device"),
    "link to /dev/null": (link_to(Path("/dev/null")), "symbolic link to a character device"),
    "link to a block device": (link_to_a_block_device, "symbolic link to a block device"),
}


class TestNotARegularFile:
    @pytest.mark.parametrize("name", NOT_FILES)
    async def test_is_refused_at_once_and_left_alone(self, session_path: Path, name: str) -> None:
        """Anything but a regular file is refused, fast, by a SessionStoreError naming it."""
        make, kind = NOT_FILES[name]
        await anyio.Path(session_path.parent).mkdir()
        await anyio.to_thread.run_sync(make, session_path)
        before = os.lstat(session_path)
        outcome = await in_a_child(session_path)
        assert outcome == (
            f"SessionStoreError: session file {session_path} is a {kind}, not a regular file; "
            "it was left as it is"
        )
        after = os.lstat(session_path)
        assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
        # Not moved aside, not replaced: it is not ours. A link is refused before any lock
        # file is made, beside it or beside what it leads to.
        made = [] if name.startswith("link") else ["session.json.lock"]
        assert sorted(p.name for p in session_path.parent.iterdir()) == ["session.json", *made]

    async def test_a_fifo_planted_after_opening_fails_the_flush(self, session_path: Path) -> None:
        """A flush that finds a FIFO fails as fast, with the same error, and keeps its counts."""
        outcome = await in_a_child(session_path, "fifo")
        assert outcome.splitlines() == [
            "pending 3",
            f"SessionStoreError: session file {session_path} is a FIFO, not a regular file; "
            "it was left as it is",
        ]
        assert read_json(session_path)["stats"]["toolCalls"] == 3

    async def test_delete_refuses_a_fifo(self, session_path: Path) -> None:
        """Deleting the session (the command line's delete) leaves someone's FIFO alone."""
        await anyio.Path(session_path.parent).mkdir()
        await anyio.to_thread.run_sync(os.mkfifo, session_path)
        with pytest.raises(SessionStoreError, match=f"{session_path} is a FIFO"):
            await anyio.to_thread.run_sync(_file.remove, session_path, 1.0)
        assert stat.S_ISFIFO((await anyio.Path(session_path).lstat()).st_mode)


def padded(size: int, session: Session | None = None) -> bytes:
    """A valid session file of exactly ``size`` bytes, padded with a key we do not know."""
    session = session or Session.new(datetime.now(timezone.utc))
    base = len(encode(Record(session, {"padding": ""})))
    return encode(Record(session, {"padding": "x" * (size - base)}))


def quarantined(session_path: Path) -> list[Path]:
    return sorted(session_path.parent.glob("session.json.corrupt-*"))


class TestALinkToTheFile:
    @pytest.fixture
    def target(self, session_path: Path) -> Path:
        """A session path that is a link to ``elsewhere/session.json``, not yet made."""
        target = session_path.parent.parent / "elsewhere" / "session.json"
        target.parent.mkdir(parents=True)
        session_path.parent.mkdir()
        session_path.symlink_to(target)
        return target

    async def test_a_write_lands_in_the_file_and_the_link_stays(
        self, session_path: Path, target: Path
    ) -> None:
        """The file a link leads to is written, beside it; the link is not replaced."""
        async with AsyncSessionStore(session_path, handle_signals=False) as store:
            await store.increment_tool_calls(3)
        assert await anyio.Path(session_path).is_symlink()
        assert read_json(target)["stats"]["toolCalls"] == 3
        assert sorted(p.name for p in session_path.parent.iterdir()) == ["session.json"]
        assert (target.parent / "session.json.lock").exists()

    async def test_the_link_and_the_file_are_one_session_under_one_lock(
        self, session_path: Path, target: Path
    ) -> None:
        """A store on the link and one on the file count into the same file, and take the
        same lock file: the one beside the file."""
        async with (
            AsyncSessionStore(session_path, handle_signals=False) as by_link,
            AsyncSessionStore(target, handle_signals=False) as by_file,
        ):
            await by_link.increment_tool_calls(3)
            await by_file.increment_tool_calls(4)
        assert read_json(target)["stats"]["toolCalls"] == 7
        assert not (session_path.parent / "session.json.lock").exists()

    async def test_a_corrupt_file_is_moved_aside_beside_it(
        self, session_path: Path, target: Path
    ) -> None:
        """The corrupt file, not the link, is moved aside; the link leads to the new one."""
        await anyio.Path(target).write_text("{oops")
        async with AsyncSessionStore(session_path, handle_signals=False) as store:
            await store.increment_tool_calls(2)
        [aside] = sorted(target.parent.glob("session.json.corrupt-*"))
        assert await anyio.Path(aside).read_text() == "{oops"
        assert await anyio.Path(session_path).is_symlink()
        assert read_json(session_path)["stats"]["toolCalls"] == 2

    async def test_a_link_into_a_directory_others_can_write_is_warned_about(
        self, session_path: Path, target: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The file's own directory is the one others could replace it in: it is judged too."""
        await anyio.Path(target.parent).chmod(0o777)
        async with AsyncSessionStore(session_path, handle_signals=False):
            pass
        assert f"chmod 700 {target.parent}" in caplog.text

    async def test_delete_deletes_the_file_and_the_link_leads_to_the_next(
        self, session_path: Path, target: Path
    ) -> None:
        """delete() removes the session's file, not the link; the next write makes it again."""
        async with AsyncSessionStore(session_path, handle_signals=False) as store:
            assert await store.delete()
            assert not await anyio.Path(target).exists()
            assert await anyio.Path(session_path).is_symlink()
            await store.increment_tool_calls(5)
        assert read_json(target)["stats"]["toolCalls"] == 5


class TestReadBound:
    async def test_a_file_of_exactly_the_bound_is_read(self, session_path: Path) -> None:
        """16 MiB is still a session: the file is read, and its id kept."""
        data = padded(BOUND)
        session_id = decode(data).session.session_id
        await anyio.Path(session_path.parent).mkdir()
        await anyio.Path(session_path).write_bytes(data)
        async with AsyncSessionStore(session_path) as store:
            assert store.session_id == session_id
        assert quarantined(session_path) == []

    async def test_one_byte_more_is_corrupt_and_moved_aside(
        self, session_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A file over the bound is corrupt: moved aside whole, never deleted; a new one starts."""
        session = Session.new(datetime.now(timezone.utc))
        data = padded(BOUND + 1, session)
        await anyio.Path(session_path.parent).mkdir()
        await anyio.Path(session_path).write_bytes(data)
        async with AsyncSessionStore(session_path) as store:
            assert store.session_id != session.session_id
        [aside] = quarantined(session_path)
        assert (await anyio.Path(aside).read_bytes()) == data, "moved aside whole"
        assert f"larger than {BOUND} bytes" in caplog.text

    async def test_a_huge_sparse_file_is_not_read_whole(self, session_path: Path) -> None:
        """A 1 TiB file (sparse: it takes no disk) is moved aside after reading 16 MiB of it."""
        await anyio.Path(session_path.parent).mkdir()
        await anyio.Path(session_path).touch()
        try:
            await anyio.to_thread.run_sync(os.truncate, session_path, 1 << 40)
        except OSError as exc:
            if exc.errno != errno.EFBIG:
                raise
            pytest.skip("this file system has no 1 TiB files")
        assert await in_a_child(session_path) == "opened"
        [aside] = quarantined(session_path)
        assert (await anyio.Path(aside).stat()).st_size == 1 << 40

    @pytest.mark.skipif(not os.path.exists("/proc/self/pagemap"), reason="Linux's /proc")
    async def test_a_file_that_reads_past_its_size_is_bounded(self, session_path: Path) -> None:
        """A link to /proc/self/pagemap (size 0, terabytes to read): a read is bounded and
        finds it corrupt; a store, which works beside the file a link leads to, cannot make
        its lock file in /proc, and says so, leaving the link as it is."""
        await anyio.Path(session_path.parent).mkdir()
        await anyio.Path(session_path).symlink_to("/proc/self/pagemap")
        with pytest.raises(CorruptSessionError, match="left in place"):
            await anyio.to_thread.run_sync(_file.peek, session_path)
        assert (await in_a_child(session_path)).startswith("SessionStoreError")
        assert await anyio.Path(session_path).readlink() == anyio.Path("/proc/self/pagemap")
        assert quarantined(session_path) == []

    async def test_deep_nesting_is_corrupt_not_a_crash(self, session_path: Path) -> None:
        """100,000 nested arrays make json raise RecursionError; it is corruption like any other."""
        await anyio.Path(session_path.parent).mkdir()
        await anyio.Path(session_path).write_text("[" * 100_000)
        async with AsyncSessionStore(session_path):
            pass
        [aside] = quarantined(session_path)
        assert await anyio.Path(aside).read_text() == "[" * 100_000

    async def test_a_session_that_would_outgrow_the_bound_is_not_written(
        self, session_path: Path
    ) -> None:
        """Else the next read would quarantine it: the flush fails and the counts wait."""
        await anyio.Path(session_path.parent).mkdir()
        await anyio.Path(session_path).write_bytes(padded(BOUND - 20))
        async with AsyncSessionStore(session_path, handle_signals=False) as store:
            big = await anyio.Path(session_path).read_bytes()  # as the open rewrote it
            async with store.tool_call("search"):
                pass
            with pytest.raises(SessionStoreError, match=f"over the {BOUND}-byte limit"):
                await store.flush()
            assert await anyio.Path(session_path).read_bytes() == big
            assert store.session.tools["search"].calls == 1
            await anyio.Path(session_path).write_bytes(padded(1000))  # room again
        assert read_json(session_path)["tools"]["search"]["calls"] == 1


class TestQuarantineNames:
    moment = datetime(2026, 11, 25, 15, 6, 7, 123000, tzinfo=timezone.utc)
    stem = "session.json.corrupt-20261125T150607.123Z"

    async def test_a_directory_at_the_name_is_stepped_over(self, session_path: Path) -> None:
        """A directory already at the quarantine name is left alone; the file gets the next."""
        await anyio.Path(session_path.parent).mkdir()
        await anyio.Path(session_path).write_text("corrupt")
        await anyio.Path(session_path.with_name(self.stem)).mkdir()
        aside = await anyio.to_thread.run_sync(_file._quarantine, session_path, self.moment)
        assert aside.name == f"{self.stem}-1"
        assert await anyio.Path(aside).read_text() == "corrupt"
        assert await anyio.Path(session_path.with_name(self.stem)).is_dir()

    async def test_a_dangling_link_at_the_name_is_not_replaced(self, session_path: Path) -> None:
        """A link to nothing still takes the name: renaming over it would delete it."""
        await anyio.Path(session_path.parent).mkdir()
        await anyio.Path(session_path).write_text("corrupt")
        await anyio.Path(session_path.with_name(self.stem)).symlink_to("nowhere")
        aside = await anyio.to_thread.run_sync(_file._quarantine, session_path, self.moment)
        assert aside.name == f"{self.stem}-1"
        assert await anyio.Path(session_path.with_name(self.stem)).readlink() == anyio.Path(
            "nowhere"
        )
