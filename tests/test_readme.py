"""The README's Python examples run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"
RUNNABLE = [
    block
    for block in re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    if "asyncio.run(" in block
]


@pytest.mark.parametrize("block", RUNNABLE)
def test_readme_example_runs(block: str, tmp_path: Path) -> None:
    """Each complete example in the README runs, writing only under $OCTOCODE_HOME."""
    env = {"OCTOCODE_HOME": str(tmp_path), "PATH": "", "HOME": str(tmp_path)}
    subprocess.run([sys.executable, "-c", block], env=env, check=True, timeout=60)
    assert (tmp_path / "session.json").is_file()


def test_the_readme_has_runnable_examples() -> None:
    """Guards the test above against a README whose code blocks stopped matching."""
    assert RUNNABLE
