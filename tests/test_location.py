"""Where the session file lives, as the TypeScript tool finds it."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiosessionstore import AsyncSessionStore


class TestLocation:
    def test_an_explicit_path_wins(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """path= beats the environment, and is made absolute."""
        monkeypatch.setenv("OCTOCODE_HOME", str(tmp_path / "env"))
        monkeypatch.chdir(tmp_path)
        assert AsyncSessionStore("here.json").path == tmp_path / "here.json"

    def test_the_app_home_variable(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """$OCTOCODE_HOME/session.json, as the TypeScript tool reads it."""
        monkeypatch.setenv("OCTOCODE_HOME", str(tmp_path))
        assert AsyncSessionStore().path == tmp_path / "session.json"

    def test_app_name_shapes_the_variable(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """app_name "my-tool" reads $MY_TOOL_HOME."""
        monkeypatch.setenv("MY_TOOL_HOME", str(tmp_path))
        assert AsyncSessionStore(app_name="my-tool").path == tmp_path / "session.json"

    def test_the_home_directory_by_default(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without the variable: ~/.octocode/session.json."""
        monkeypatch.delenv("OCTOCODE_HOME", raising=False)
        monkeypatch.setenv("HOME", str(tmp_path))
        assert AsyncSessionStore().path == tmp_path / ".octocode" / "session.json"

    def test_an_empty_variable_is_ignored(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """OCTOCODE_HOME= (empty) means unset, not the current directory."""
        monkeypatch.setenv("OCTOCODE_HOME", "")
        monkeypatch.setenv("HOME", str(tmp_path))
        assert AsyncSessionStore().path == tmp_path / ".octocode" / "session.json"

    @pytest.mark.parametrize("name", ["", "..", "a/b", "a\\\\b"])
    def test_an_app_name_must_be_a_plain_name(self, name: str) -> None:
        """An app name that would escape the home directory is refused."""
        with pytest.raises(ValueError, match="app_name"):
            AsyncSessionStore(app_name=name)
