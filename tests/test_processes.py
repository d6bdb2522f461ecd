"""Many processes on one session file: one session, and every count arrives exactly once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import read_json

WORKER = Path(__file__).with_name("workers.py")


def run_together(path: Path, processes: int, increments: int, every: int) -> list[str]:
    """Start the workers, release them at once, and return the session id each ended with."""
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(path), str(increments), str(every)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    ids = []
    for worker in workers:
        out, _ = worker.communicate(timeout=60)
        assert worker.returncode == 0
        ids.append(out.strip())
    return ids


class TestManyProcesses:
    def test_a_new_file_gets_exactly_one_session(self, session_path: Path) -> None:
        """Processes started at once on a missing file agree on one session id."""
        ids = run_together(session_path, processes=4, increments=1, every=1)
        assert len(set(ids)) == 1
        assert read_json(session_path)["sessionId"] == ids[0]

    @pytest.mark.parametrize("every", [1, 50])
    def test_no_increment_is_lost(self, session_path: Path, every: int) -> None:
        """N processes x K increments end as N x K on disk (the seed keeps about a quarter)."""
        run_together(session_path, processes=4, increments=500, every=every)
        assert read_json(session_path)["stats"]["toolCalls"] == 2000
