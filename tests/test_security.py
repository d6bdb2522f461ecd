"""Permissions, symbolic links, and where session data may go."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from aiosessionstore import AsyncSessionStore, SessionStoreError, _file

from .conftest import read_json

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions and links"),
]


@pytest.fixture(params=[0o000, 0o022, 0o077])
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
        """A permissive umask does not widen the session file or its directory."""
        async with AsyncSessionStore(session_path) as store:
            await store.increment_tool_calls()
        assert (await anyio.Path(session_path).stat()).st_mode & 0o777 == 0o600
        assert (await anyio.Path(session_path.parent).stat()).st_mode & 0o777 == 0o700

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
        monkeypatch.setattr("aiosessionstore._file.secrets.token_hex", lambda _: "planted")
        (session_path.parent / "session.json.planted.tmp").symlink_to(target)
        monkeypatch.setattr(_file, "_remove_stale_temp_files", lambda path: None)
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
