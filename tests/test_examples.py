"""Every example runs, as a user would run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"


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
