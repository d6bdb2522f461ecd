"""Every example runs, as a user would run it."""

from __future__ import annotations

import os
import re
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


@pytest.mark.parametrize(
    "options",
    [
        pytest.param([], id="mcp-stdio"),
        pytest.param(["--server", "fastmcp", "--http"], id="fastmcp-http"),
    ],
)
def test_mcp_client_example_drives_and_shows_the_session(
    tmp_path: Path, options: list[str]
) -> None:
    """examples/mcp_client.py, as the quick start runs it: the acceptance case counted in
    ~/.aiosessionstore-demo, shown by `aiosessionstore show`, with no traceback."""
    pytest.importorskip("mcp")
    if "fastmcp" in options:
        pytest.importorskip("fastmcp")
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "mcp_client.py"), *options],
        capture_output=True,
        text=True,
        env={**os.environ, "HOME": str(tmp_path)},
        check=True,
        timeout=120,
    )
    path = tmp_path / ".aiosessionstore-demo" / "session.json"
    assert f"the session is in {path}" in done.stdout
    for line in ("tool calls   13", "prompt calls 4", "errors       6", "rate limits  1"):
        assert line in done.stdout
    assert re.search(r"^fetch_quote +3 +0 +1 ", done.stdout, re.M)
    assert re.search(r"^\(unknown\) +1 +1 +0 ", done.stdout, re.M)
    assert "Traceback" not in done.stderr
    assert path.is_file()  # left in place
