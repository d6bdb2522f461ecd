"""The aiosessionstore command: show, path, reset, new, delete, and its exit statuses."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from aiosessionstore import AsyncSessionStore, CorruptSessionError, _file
from aiosessionstore._cli import EXIT_CODES, main

from .conftest import read_json


def run(*argv: str, answer: str = "") -> int:
    return main(list(argv), stdin=io.StringIO(answer))


@pytest.fixture
def session_file(session_path: Path) -> Path:
    """A session with counts and per-tool stats, written by a store."""

    async def fill() -> None:
        async with AsyncSessionStore(session_path, handle_signals=False) as store:
            await store.increment_prompt_calls(2)
            for _ in range(3):
                async with store.tool_call("search"):
                    pass
            with pytest.raises(ZeroDivisionError):
                async with store.tool_call("divide"):
                    _ = 1 / 0

    anyio.run(fill)
    return session_path


class TestShow:
    def test_a_readable_summary(
        self, session_file: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Id, age, last activity, counters, and tools by calls then errors."""
        assert run("show", "--path", str(session_file)) == 0
        out = capsys.readouterr().out
        assert read_json(session_file)["sessionId"] in out
        assert "tool calls   4" in out
        assert "prompt calls 2" in out
        assert "errors       1" in out
        tool_lines = [line.split()[0] for line in out.splitlines() if line.startswith(("s", "d"))]
        assert tool_lines[-2:] == ["search", "divide"]

    def test_json_is_the_file_as_stored(
        self, session_file: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--json prints what is on disk, tools included."""
        assert run("show", "--json", "--path", str(session_file)) == 0
        assert json.loads(capsys.readouterr().out) == read_json(session_file)

    def test_show_changes_nothing(self, session_file: Path) -> None:
        """Looking is not activity: the file is byte for byte the same."""
        before = session_file.read_bytes()
        run("show", "--path", str(session_file))
        assert session_file.read_bytes() == before

    def test_a_missing_file(self, session_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """No file: exit status 3 and a message on stderr, nothing on stdout."""
        assert run("show", "--path", str(session_path)) == EXIT_CODES["missing"] == 3
        captured = capsys.readouterr()
        assert captured.out == ""
        assert f"no session file at {session_path}" in captured.err

    def test_a_corrupt_file_points_at_the_quarantined_copy(
        self, session_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Corrupt: moved aside, exit status 4, and the message says where it went."""
        session_path.parent.mkdir()
        session_path.write_text("{oops")
        assert run("show", "--path", str(session_path)) == EXIT_CODES["corrupt"] == 4
        [aside] = session_path.parent.glob("session.json.corrupt-*")
        assert aside.read_text() == "{oops"
        assert str(aside) in capsys.readouterr().err

    def test_the_corrupt_error_carries_the_quarantined_path(self, session_path: Path) -> None:
        """CorruptSessionError.quarantined_to is where the bad file went."""
        session_path.parent.mkdir()
        session_path.write_text("[]")
        with pytest.raises(CorruptSessionError) as caught:
            _file.read(session_path, lock_timeout=1)
        assert caught.value.quarantined_to is not None
        assert caught.value.quarantined_to.read_text() == "[]"

    def test_a_newer_version(self, session_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """From a newer version: exit status 5, and the file is left as it is."""
        document = read_json(session_file) | {"version": 9}
        session_file.write_text(json.dumps(document))
        assert run("show", "--path", str(session_file)) == EXIT_CODES["newer"] == 5
        assert "upgrade aiosessionstore" in capsys.readouterr().err
        assert read_json(session_file)["version"] == 9


class TestCommands:
    def test_path_follows_app(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--app picks the $<APP>_HOME variable, as the library does."""
        monkeypatch.setenv("MY_TOOL_HOME", str(tmp_path))
        assert run("path", "--app", "my-tool") == 0
        assert capsys.readouterr().out == f"{tmp_path / 'session.json'}\n"

    def test_reset_keeps_the_id_and_clears_tools(self, session_file: Path) -> None:
        """reset zeroes counters and per-tool stats, keeps the session id."""
        session_id = read_json(session_file)["sessionId"]
        assert run("reset", "--path", str(session_file)) == 0
        document = read_json(session_file)
        assert document["sessionId"] == session_id
        assert set(document["stats"].values()) == {0}
        assert "tools" not in document

    def test_reset_without_a_file_creates_nothing(self, session_path: Path) -> None:
        """There is nothing to reset: exit status 3, and no file appears."""
        assert run("reset", "--path", str(session_path)) == 3
        assert not session_path.exists()

    def test_new_starts_a_new_id(self, session_file: Path) -> None:
        """new replaces the id and zeroes everything."""
        old_id = read_json(session_file)["sessionId"]
        assert run("new", "--path", str(session_file)) == 0
        assert read_json(session_file)["sessionId"] != old_id

    def test_delete_asks_first(self, session_file: Path) -> None:
        """Without --yes, anything but y keeps the file (exit status 1)."""
        assert run("delete", "--path", str(session_file), answer="n\n") == 1
        assert session_file.exists()
        assert run("delete", "--path", str(session_file), answer="y\n") == 0
        assert not session_file.exists()

    def test_delete_yes_and_a_missing_file(self, session_file: Path) -> None:
        """--yes deletes at once; a second delete finds nothing (exit status 3)."""
        assert run("delete", "--yes", "--path", str(session_file)) == 0
        assert run("delete", "--yes", "--path", str(session_file)) == 3
        assert (session_file.parent / "session.json.lock").exists()

    def test_a_bad_app_name_is_a_usage_error(self, capsys: pytest.CaptureFixture[str]) -> None:
        """An app name that is not a plain directory name: exit status 2."""
        assert run("path", "--app", "../x") == 2
        assert "app_name" in capsys.readouterr().err


class TestWhileServersRun:
    @pytest.mark.anyio
    async def test_reset_while_a_store_is_open_keeps_later_counts(self, session_path: Path) -> None:
        """The command line takes the same lock: counts made after a reset still arrive."""
        async with AsyncSessionStore(session_path) as store:
            await store.increment_tool_calls(5)
            await store.flush()
            code = await anyio.to_thread.run_sync(run, "reset", "--path", str(session_path))
            assert code == 0
            await store.increment_tool_calls(2)
        assert (await anyio.to_thread.run_sync(read_json, session_path))["stats"]["toolCalls"] == 2


def test_the_console_script_and_module_run(session_file: Path) -> None:
    """`python -m aiosessionstore` is the same command."""
    done = subprocess.run(
        [sys.executable, "-m", "aiosessionstore", "show", "--path", str(session_file)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert "tool calls" in done.stdout
