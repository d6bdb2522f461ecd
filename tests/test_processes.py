"""Many processes on one session file, and writers killed with SIGKILL: nothing lost or torn."""

from __future__ import annotations

import json
import random
import signal
import subprocess
from pathlib import Path

import pytest

from aiosessionstore._codec import decode

from .conftest import posix_only, read_json
from .conftest import start_worker as start


def release(workers: list[subprocess.Popen[str]]) -> None:
    """Let every worker go at once: each waits for a line on stdin."""
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()


def finish(worker: subprocess.Popen[str]) -> tuple[str, str]:
    out, err = worker.communicate(timeout=90)
    return out, err


def run_together(path: Path, processes: int, increments: int, every: int) -> list[str]:
    """Run counting workers side by side; return the session id each ended with."""
    workers = [start("count", path, increments, every) for _ in range(processes)]
    release(workers)
    ids = []
    for worker in workers:
        out, err = finish(worker)
        assert worker.returncode == 0, err
        assert err == ""
        ids.append(out.splitlines()[-1].removeprefix("session "))
    return ids


pytestmark = pytest.mark.slow


class TestManyProcesses:
    def test_a_new_file_gets_exactly_one_session(self, session_path: Path) -> None:
        """Processes started at once on a missing file agree on one session id."""
        ids = run_together(session_path, processes=4, increments=1, every=1)
        assert len(set(ids)) == 1
        assert read_json(session_path)["sessionId"] == ids[0]

    def test_eight_processes_lose_no_increment(self, session_path: Path) -> None:
        """8 processes x 5,000 increments, flushing every 100: exactly 40,000 on disk."""
        ids = run_together(session_path, processes=8, increments=5000, every=100)
        on_disk = read_json(session_path)
        assert on_disk["stats"]["toolCalls"] == 40_000
        assert set(ids) == {on_disk["sessionId"]}

    @posix_only
    def test_killed_writers_lose_only_unflushed_counts(self, session_path: Path) -> None:
        """Half the writers are SIGKILLed at random: every reported flush is still on disk."""
        workers = [start("count", session_path, 5000, 100) for _ in range(8)]
        release(workers)
        victims = random.sample(workers, 4)
        for victim in victims:
            assert victim.stdout is not None
            for _ in range(random.randint(1, 40)):  # wait for a random number of flushes
                victim.stdout.readline()
            victim.send_signal(signal.SIGKILL)
        reported = 0
        for worker in workers:
            out, _ = finish(worker)
            flushed = [int(line.split()[1]) for line in out.splitlines() if "flushed" in line]
            reported += max(flushed, default=0)
            # A victim may finish before its SIGKILL lands; a survivor always finishes.
            assert worker.returncode in ((0, -signal.SIGKILL) if worker in victims else (0,))
        on_disk = decode(session_path.read_bytes()).session.stats.tool_calls
        assert reported <= on_disk <= 40_000


@posix_only
class TestKilledMidWrite:
    def test_the_file_always_parses(self, session_path: Path) -> None:
        """100 writers killed with SIGKILL mid-flush: every time, the file is whole."""
        worker = start("kill-mid-flush", session_path, 100)
        out, err = finish(worker)
        assert worker.returncode == 0, err
        result = json.loads(out)
        assert result["count"] >= 1 + 100  # each writer flushed at least once before its kill
        leftovers = result["files"]
        temp_files = [name for name in leftovers if name.endswith(".tmp")]
        assert len(temp_files) <= 1  # the last victim's, at most: each writer cleans up
        assert sorted(set(leftovers) - set(temp_files)) == ["session.json", "session.json.lock"]

    def test_a_dead_writers_temp_file_is_cleaned_up(self, session_path: Path) -> None:
        """The next writer holding the lock removes temp files that nobody is writing."""
        worker = start("kill-mid-flush", session_path, 20)
        finish(worker)
        run_together(session_path, processes=1, increments=1, every=1)
        assert sorted(p.name for p in session_path.parent.iterdir()) == [
            "session.json",
            "session.json.lock",
        ]
