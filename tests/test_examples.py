"""Every example runs, as a user would run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"

pytestmark = pytest.mark.slow


def test_basic_example_counts_and_persists(tmp_path: Path) -> None:
    """examples/basic.py counts 20 tool calls and 4 errors per run, and they persist."""
    path = tmp_path / "session.json"
    for run in (1, 2):
        done = subprocess.run(
            [sys.executable, str(EXAMPLES / "basic.py"), str(path)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        assert f"tool calls: {20 * run}, prompt calls: {run}, errors: {4 * run}" in done.stdout


def test_mcp_client_example_runs_the_server_and_shows_the_session(tmp_path: Path) -> None:
    """examples/mcp_client.py: 3 tools x 4 rounds and a prompt, shown as `show` does."""
    pytest.importorskip("mcp")
    path = tmp_path / "session.json"
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "mcp_client.py"), "--session", str(path), "--calls", "4"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert "tool calls   12" in done.stdout
    assert "prompt calls 1" in done.stdout
    assert "fetch_quote" in done.stdout
