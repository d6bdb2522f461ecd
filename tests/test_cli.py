"""The aiosessionstore command: show, path, reset, new, delete, export, import, and its exit
statuses."""

from __future__ import annotations

import io
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import IO, Any

import anyio
import pytest
import redis

from aiosessionstore import (
    AsyncSessionStore,
    CorruptSessionError,
    SessionExistsError,
    SessionStoreError,
    _cli,
    _file,
)
from aiosessionstore._backend import Backend
from aiosessionstore._change import Change, Mode
from aiosessionstore._cli import EXIT_CODES, main
from aiosessionstore._codec import decode, encode
from aiosessionstore._location import resolve_backend
from aiosessionstore._session import Counts

from .conftest import MemoryBackend, read_json
from .servers import free_port

#: Shells, FIFOs, pseudo-terminals and /dev/null, which the stream and file-type tests use.
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX streams and files")


def run(*argv: str, answer: str = "") -> int:
    return main(list(argv), stdin=io.StringIO(answer))


def cli(*argv: str | bytes | Path, **options: Any) -> subprocess.CompletedProcess[bytes]:
    """`python -m aiosessionstore ...` in a real process; stdin empty, output captured."""
    command = [sys.executable, "-m", "aiosessionstore", *argv]
    stdin = options.pop("stdin", subprocess.DEVNULL)
    stdout = options.pop("stdout", subprocess.PIPE)
    stderr = options.pop("stderr", subprocess.PIPE)
    input_: bytes | None = options.pop("input", None)
    return subprocess.run(
        command, stdin=stdin, stdout=stdout, stderr=stderr, input=input_, timeout=60, **options
    )


def in_shell(redirection: str, *argv: str) -> subprocess.CompletedProcess[bytes]:
    """The command with a shell redirection, such as ``>&-``, which closes a stream."""
    script = f'exec "$0" -m aiosessionstore "$@" {redirection}'
    return subprocess.run(
        ["sh", "-c", script, sys.executable, *argv], capture_output=True, timeout=60, check=False
    )


def write_session(
    path: Path, session_id: str = "7a1c9e52-3f0b-4d7e-9a51-0c2f8d6b4e13", **extra: Any
) -> Path:
    """A valid session file written by hand, so that it may hold anything JSON can."""
    tools = extra.pop("tools", {})
    document = {
        "version": 1,
        "sessionId": session_id,
        "createdAt": "2026-01-02T03:04:05.678Z",
        "lastActiveAt": "2026-01-02T04:04:05.678Z",
        "stats": {"toolCalls": 3, "promptCalls": 1, "errors": 0, "rateLimits": 0},
        **({"tools": tools} if tools else {}),
        **extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2))  # ASCII: even a lone surrogate is escaped
    return path


def tool(calls: int = 1) -> dict[str, Any]:
    return {"calls": calls, "errors": 0, "rateLimits": 0, "totalMs": 1.5, "maxMs": 1.0}


def listing(directory: Path) -> tuple[list[str], int]:
    """The names in a directory and its mtime, which any entry made or removed changes."""
    return sorted(os.listdir(directory)), directory.stat().st_mtime_ns


def visible(text: str) -> bool:
    """True if a terminal shows every character of ``text`` as itself, line breaks aside."""
    return all(char.isprintable() for char in text.replace("\n", ""))


@pytest.fixture(autouse=True)
def user_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test, and every process it starts, has a home of its own and no $OCTOCODE_HOME."""
    home = tmp_path / "user"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("OCTOCODE_HOME", raising=False)
    monkeypatch.setenv("PYTHONIOENCODING", "utf-8")
    return home


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


class ReadOnlyDisk:
    """A directory that the test fills, then makes read-only: a real remount where possible."""

    def __init__(self, path: Path, mounted: bool) -> None:
        self.path = path
        self.mounted = mounted

    def freeze(self) -> None:
        if self.mounted:
            mount("-o", "remount,ro", str(self.path))
        else:
            self.path.chmod(0o555)


def mount(*arguments: str) -> None:
    subprocess.run(["mount", *arguments], check=True, capture_output=True)


@pytest.fixture
def read_only_disk(tmp_path: Path) -> Iterator[ReadOnlyDisk]:
    """A tmpfs remounted read-only as root; as another user, a directory without write bits."""
    path = tmp_path / "disk"
    path.mkdir()
    if sys.platform != "linux":
        pytest.skip("read-only mounts are tested on Linux")
    if os.geteuid() != 0:  # permissions bind everyone but root
        yield ReadOnlyDisk(path, mounted=False)
        path.chmod(0o755)
        return
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    try:
        mount("-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(path))
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc.stderr.strip()}")
    try:
        yield ReadOnlyDisk(path, mounted=True)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


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

    def test_percentiles_prompts_and_clients(
        self, session_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Each tool and prompt shows p50, p95 and p99 from its buckets; clients their calls."""
        slow = tool(10) | {"latency": {"40": 9, "52": 1}, "maxMs": 5.0}
        write_session(
            session_path,
            tools={"search": slow},
            prompts={"summarize": tool(2)},
            clients={"claude-code": {"toolCalls": 10, "promptCalls": 2}},
        )
        assert run("show", "--path", str(session_path)) == 0
        lines = capsys.readouterr().out.splitlines()
        header = "tool    calls  errors  limited  avg ms  p50 ms  p95 ms  p99 ms  max ms"
        assert lines[lines.index(header) + 1].split() == [
            "search", "10", "0", "0", "0.15", "0.94", "5.00", "5.00", "5.00"
        ]  # fmt: skip
        assert lines[-5].split()[:2] == ["prompt", "calls"]
        assert lines[-4].split()[:2] == ["summarize", "2"]
        assert lines[-2:] == [
            "client       tool calls  prompt calls",
            "claude-code          10             2",
        ]

    def test_json_is_the_file_as_stored(
        self, session_file: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--json prints what is on disk, byte for byte for a file the store wrote."""
        assert run("show", "--json", "--path", str(session_file)) == 0
        assert capsys.readouterr().out == session_file.read_text() + "\n"

    def test_json_keeps_unknown_keys(
        self, session_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Keys the TypeScript tool added are printed too, in the file's order."""
        write_session(session_path, tools={"search": tool()}, theme={"dark": True}, n=[1, 2])
        assert run("show", "--json", "--path", str(session_path)) == 0
        assert json.loads(capsys.readouterr().out) == read_json(session_path)

    def test_a_missing_file(self, session_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """No file: exit status 3 and a message on stderr, nothing on stdout."""
        assert run("show", "--path", str(session_path)) == EXIT_CODES["missing"] == 3
        captured = capsys.readouterr()
        assert captured.out == ""
        assert f"no session file at {session_path}" in captured.err

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


DEEP = "[" * 5000 + "]" * 5000
CORRUPT = {
    "not JSON": "{oops",
    "empty": "",
    "not an object": "[]",
    "nested too deep": '{"version": 1, "x": ' + DEEP + "}",
    "an integer too long to read": '{"version": 1' + "0" * 5000 + "}",
    "a date before year 1 in UTC": json.dumps(
        {
            "version": 1,
            "sessionId": "a",
            "createdAt": "0001-01-01T00:00:00+01:00",
            "lastActiveAt": "2026-01-01T00:00:00Z",
            "stats": {"toolCalls": 0, "promptCalls": 0, "errors": 0, "rateLimits": 0},
        }
    ),
    "NaN, which is not JSON": json.dumps(
        {
            "version": 1,
            "sessionId": "a",
            "createdAt": "2026-01-01T00:00:00Z",
            "lastActiveAt": "2026-01-01T00:00:00Z",
            "stats": {"toolCalls": 0, "promptCalls": 0, "errors": 0, "rateLimits": 0},
            "x": float("nan"),
        }
    ),
}


class TestShowChangesNothing:
    @pytest.mark.parametrize("flags", [[], ["--json"]], ids=["table", "json"])
    def test_no_lock_file_and_no_cleanup(self, session_path: Path, flags: list[str]) -> None:
        """No lock file appears and another writer's temp file stays: the directory is as it was."""
        write_session(session_path)
        (session_path.parent / "session.json.0123456789abcdef.tmp").write_text("{")
        before = listing(session_path.parent), session_path.read_bytes()
        assert run("show", *flags, "--path", str(session_path)) == 0
        assert (listing(session_path.parent), session_path.read_bytes()) == before

    def test_a_mistyped_path_creates_nothing(self, tmp_path: Path) -> None:
        """A file in a directory that does not exist: exit status 3, and no directory appears."""
        assert run("show", "--path", str(tmp_path / "typo" / "session.json")) == 3
        assert not (tmp_path / "typo").exists()

    def test_it_does_not_wait_for_the_lock(self, session_path: Path) -> None:
        """Writers replace the file atomically, so show reads it while another process locks."""
        write_session(session_path)
        with subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, str(session_path) + ".lock"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        ) as holder:  # fmt: skip
            try:
                assert holder.stdout is not None
                assert holder.stdout.readline() == b"held\n"
                assert run("show", "--path", str(session_path)) == 0
            finally:
                holder.kill()

    @pytest.mark.parametrize("flags", [[], ["--json"]], ids=["table", "json"])
    def test_a_read_only_filesystem(
        self, read_only_disk: ReadOnlyDisk, flags: list[str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """No write access is needed: show works where nothing can be written."""
        path = write_session(read_only_disk.path / "session.json")
        read_only_disk.freeze()
        assert run("show", *flags, "--path", str(path)) == 0
        assert "7a1c9e52-3f0b-4d7e-9a51-0c2f8d6b4e13" in capsys.readouterr().out

    def test_a_corrupt_file_on_a_read_only_filesystem(self, read_only_disk: ReadOnlyDisk) -> None:
        """Corrupt and read-only: still exit status 4, not a failure to write."""
        path = read_only_disk.path / "session.json"
        path.write_text("{oops")
        read_only_disk.freeze()
        assert run("show", "--path", str(path)) == EXIT_CODES["corrupt"]

    @pytest.mark.parametrize("content", CORRUPT.values(), ids=CORRUPT.keys())
    @pytest.mark.parametrize("flags", [[], ["--json"]], ids=["table", "json"])
    def test_a_corrupt_file_is_left_in_place(
        self,
        session_path: Path,
        content: str,
        flags: list[str],
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Exit status 4, a message that says so, and the file where it was, unchanged."""
        session_path.parent.mkdir()
        session_path.write_text(content)
        before = listing(session_path.parent)
        assert run("show", *flags, "--path", str(session_path)) == EXIT_CODES["corrupt"] == 4
        assert listing(session_path.parent) == before
        assert session_path.read_text() == content
        captured = capsys.readouterr()
        assert captured.out == ""
        assert f"session file {session_path} is corrupt" in captured.err
        assert "left in place" in captured.err


def not_a_file(kind: str, path: Path) -> Path:
    """Something at ``path`` that is no session file: a directory, a device, or a FIFO."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "directory":
        path.mkdir()
    elif kind == "device":
        path.symlink_to(os.devnull)  # as root, the device itself could be moved or deleted
    else:
        os.mkfifo(path)
    return path


@posix_only
class TestNotARegularFile:
    @pytest.mark.parametrize("kind", ["directory", "device"])
    @pytest.mark.parametrize(
        "command",
        [["show"], ["show", "--json"], ["reset"], ["new"], ["delete", "--yes"], ["export"]],
        ids=" ".join,
    )
    def test_it_is_refused_and_left_alone(
        self, session_path: Path, kind: str, command: list[str]
    ) -> None:
        """Exit status 1: nothing moved aside, replaced or deleted, and no lock file beside it."""
        not_a_file(kind, session_path)
        before = listing(session_path.parent), os.lstat(session_path).st_mode
        assert run(*command, "--path", str(session_path)) == EXIT_CODES["error"]
        assert (listing(session_path.parent), os.lstat(session_path).st_mode) == before

    def test_delete_leaves_a_fifo(self, session_path: Path) -> None:
        """A FIFO is not deleted (its open would block, so only delete is tried)."""
        not_a_file("fifo", session_path)
        assert run("delete", "--yes", "--path", str(session_path)) == EXIT_CODES["error"]
        assert session_path.is_fifo()


HOSTILE = {
    "\x1b]0;x\x07\nerrors 0": r"\x1b]0;x\x07\nerrors\x200",
    "\x1b[2J\rcleared": r"\x1b[2J\rcleared",
    "\u202egnp.exe": r"\u202egnp.exe",
    "\u2066isolated\u2069": r"\u2066isolated\u2069",
    "del\x7f": r"del\x7f",
    "c1\x9b31m": r"c1\x9b31m",
    "lone\ud800": r"lone\ud800",
    "line\u2028sep": r"line\u2028sep",
    "tag\U000e0041": r"tag\U000e0041",
    "back\\slash": r"back\\slash",
    "two words": r"two\x20words",
    "café": "café",
    "x" * 10_000: "x" * 61 + "...",
}


ASCII = {"PYTHONIOENCODING": "ascii"}


def short_id(value: object) -> str:
    return ascii(value)[:24]


def reject(constant: str) -> None:
    raise AssertionError(f"{constant} is not JSON")


class TestShowEscapes:
    @pytest.mark.parametrize(("name", "shown"), HOSTILE.items(), ids=short_id)
    def test_a_tool_name_is_one_visible_cell(
        self, session_path: Path, name: str, shown: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Each character visible, no row or column forged, and at most 64 characters long."""
        write_session(session_path, tools={name: tool(7)})
        assert run("show", "--path", str(session_path)) == 0
        out = capsys.readouterr().out
        assert visible(out)
        lines = out.split("\n")
        assert len(lines) == 12  # 8 lines of counts, a blank line, a header, a row, and ""
        assert lines[10].split() == [shown, "7", "0", "0", "0.21", "-", "-", "-", "1.00"]
        assert sum(line.startswith("errors") for line in lines) == 1

    @pytest.mark.parametrize(
        ("session_id", "shown"),
        [(name, shown) for name, shown in HOSTILE.items() if "\ud800" not in name],
        ids=short_id,
    )
    def test_the_session_id(
        self, session_path: Path, session_id: str, shown: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The id is escaped and cut short as a tool name is."""
        write_session(session_path, session_id=session_id)
        assert run("show", "--path", str(session_path)) == 0
        out = capsys.readouterr().out
        assert visible(out)
        assert out.split("\n")[0] == f"session      {shown}"

    def test_the_path(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """The file's own name is escaped too: it may come from $OCTOCODE_HOME."""
        path = write_session(tmp_path / "\x1b]0;x\x07" / "session.json")
        assert run("show", "--path", str(path)) == 0
        assert visible(capsys.readouterr().out)

    def test_a_real_terminal_stream(self, session_path: Path) -> None:
        """In a real process, the issue's example and friends reach stdout as plain text."""
        names = list(HOSTILE)[:10]
        write_session(session_path, tools={name: tool() for name in names})
        done = cli("show", "--path", session_path)
        assert done.returncode == 0, done.stderr
        out = done.stdout.decode()
        assert visible(out)
        assert len(out.split("\n")) == 8 + 2 + len(names) + 1

    def test_json_is_strict_and_visible(self, session_path: Path) -> None:
        """--json escapes what a terminal would act on; the JSON still means the same."""
        write_session(
            session_path,
            session_id="\x1b[2J\u202e",
            tools={name: tool() for name in HOSTILE},
            note="\x1b]0;x\x07\x9b\x7f",
            nested={"lone\udc80": ["\u2028", "\U000e0041"]},
        )
        done = cli("show", "--json", "--path", session_path)
        assert done.returncode == 0, done.stderr
        out = done.stdout.decode()
        assert visible(out)
        assert json.loads(out, parse_constant=reject) == read_json(session_path)

    @pytest.mark.parametrize("flags", [[], ["--json"]], ids=["table", "json"])
    def test_an_ascii_stdout(self, session_path: Path, flags: list[str]) -> None:
        """A stdout that cannot encode a name gets escapes, not a UnicodeEncodeError."""
        write_session(session_path, tools={"café": tool()})
        done = cli("show", *flags, "--path", session_path, env=os.environ | ASCII)
        assert done.returncode == 0, done.stderr
        out = done.stdout.decode("ascii")
        if flags:
            assert json.loads(out) == read_json(session_path)
        else:
            assert "caf\\xe9" in out

    def test_a_message_from_the_file(self, session_path: Path) -> None:
        """An error that quotes the file is escaped on stderr as well."""
        write_session(session_path, tools={"\x1b]0;pwned\x07": []})
        done = cli("show", "--path", session_path)
        assert done.returncode == EXIT_CODES["corrupt"]
        assert visible(done.stderr.decode())
        assert b"\\x1b]0;pwned\\x07" in done.stderr

    def test_a_warning_from_the_file(self, session_path: Path) -> None:
        """The library's warning that it moved such a file aside is escaped too."""
        write_session(session_path, tools={"\x1b]0;pwned\x07": []})
        done = cli("new", "--path", session_path)
        assert done.returncode == 0, done.stderr
        assert b"corrupt" in done.stderr
        assert visible(done.stderr.decode())


@posix_only
class TestOutputStreams:
    @pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
    def test_a_full_disk(self, session_file: Path) -> None:
        """stdout on /dev/full: exit status 1 and the reason, not a traceback at exit."""
        with open("/dev/full", "wb") as full:
            done = cli("show", "--path", session_file, stdout=full)
        assert done.returncode == EXIT_CODES["error"]
        assert b"No space left on device" in done.stderr
        assert b"Traceback" not in done.stderr
        assert b"Exception ignored" not in done.stderr

    def test_a_reader_that_went_away(self, session_file: Path) -> None:
        """A closed pipe (`| head` after its line): exit status 1 and nothing on stderr."""
        reader, writer = os.pipe()
        os.close(reader)
        try:
            done = cli("show", "--path", session_file, stdout=writer)
        finally:
            os.close(writer)
        assert (done.returncode, done.stderr) == (EXIT_CODES["error"], b"")

    def test_a_closed_stdout(self, session_file: Path) -> None:
        """`show >&-` shows nothing, so it fails and says why."""
        done = in_shell(">&-", "show", "--path", str(session_file))
        assert done.returncode == EXIT_CODES["error"]
        assert b"standard output is closed" in done.stderr

    def test_a_closed_stderr(self, session_path: Path) -> None:
        """With stderr closed, a message is lost rather than printed among the output."""
        done = in_shell("2>&-", "show", "--path", str(session_path))
        assert (done.returncode, done.stdout) == (EXIT_CODES["missing"], b"")

    @pytest.mark.parametrize("command", [["reset"], ["new"], ["delete", "--yes"]], ids=" ".join)
    def test_what_a_change_says_goes_to_stderr(
        self, session_file: Path, command: list[str]
    ) -> None:
        """stdout carries only what show and path print; a change is reported on stderr."""
        done = cli(*command, "--path", session_file)
        assert done.returncode == 0, done.stderr
        assert done.stdout == b""
        assert str(session_file).encode() in done.stderr


@posix_only
class TestDeletePrompt:
    def test_the_prompt_goes_to_stderr(self, session_file: Path) -> None:
        """With stdout redirected, the question is still seen; "n" keeps the file."""
        done = cli("delete", "--path", session_file, stdin=None, input=b"n\n")
        assert done.returncode == EXIT_CODES["error"]
        assert done.stdout == b""
        assert f"delete session file {session_file}? [y/N] ".encode() in done.stderr
        assert b"not deleted" in done.stderr
        assert session_file.exists()

    def test_yes_through_a_pipe(self, session_file: Path) -> None:
        """An answer piped in is read like a typed one."""
        done = cli("delete", "--path", session_file, stdin=None, input=b"yes\n")
        assert done.returncode == 0, done.stderr
        assert not session_file.exists()

    def test_a_closed_stdin(self, session_file: Path) -> None:
        """`<&-`: no answer is no, without a traceback."""
        done = in_shell("<&-", "delete", "--path", str(session_file))
        assert done.returncode == EXIT_CODES["error"]
        assert b"not deleted" in done.stderr
        assert b"Traceback" not in done.stderr
        assert session_file.exists()

    def test_ctrl_c_at_the_prompt(self, session_file: Path) -> None:
        """Interrupted while asking: exit status 1, the file kept, no traceback."""
        with subprocess.Popen(
            [sys.executable, "-m", "aiosessionstore", "delete", "--path", str(session_file)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        ) as process:  # fmt: skip
            assert process.stderr is not None
            read_until(process.stderr, b"[y/N] ")  # the prompt is on screen: it waits for us
            process.send_signal(signal.SIGINT)
            _, err = process.communicate(timeout=60)
        assert process.returncode == EXIT_CODES["error"]
        assert b"Traceback" not in err
        assert session_file.exists()

    def test_the_prompt_escapes_the_path(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """What is about to be deleted cannot be disguised by control characters."""
        path = write_session(tmp_path / "a\rsafe.json")
        assert run("delete", "--path", str(path), answer="n\n") == EXIT_CODES["error"]
        assert "delete session file " + str(tmp_path / "a\\rsafe.json") + "? [y/N] " in (
            capsys.readouterr().err
        )


def read_until(stream: IO[bytes], marker: bytes) -> bytes:
    """Read a pipe up to ``marker``; the time limit only keeps a broken build from hanging."""
    said = b""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while not said.endswith(marker):
            assert selector.select(timeout=60), said
            chunk = os.read(stream.fileno(), 4096)
            assert chunk, said
            said += chunk
    return said


@posix_only
class TestPathCommand:
    def test_it_creates_nothing(self, user_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """The default path is printed, and neither its directory nor a lock file appears."""
        assert run("path") == 0
        assert capsys.readouterr().out == f"{user_home / '.octocode' / 'session.json'}\n"
        assert os.listdir(user_home) == []

    def test_a_pipe_gets_the_bytes(self, tmp_path: Path) -> None:
        """For `$(aiosessionstore path)`: the path's own bytes, even those no codec can show."""
        path = os.fsencode(tmp_path) + b"/\xff\x1b.json"
        done = cli("path", "--path", path)
        assert (done.returncode, done.stdout) == (0, path + b"\n")

    def test_a_terminal_gets_escapes(self, tmp_path: Path) -> None:
        """On a terminal, as ls does, control characters are shown as escapes."""
        primary, secondary = os.openpty()
        try:
            done = cli("path", "--path", tmp_path / "\x1b]0;x\x07.json", stdout=secondary)
        finally:
            os.close(secondary)
        shown = b""
        while chunk := read_terminal(primary):
            shown += chunk
        os.close(primary)
        assert done.returncode == 0, done.stderr
        assert shown == os.fsencode(tmp_path) + b"/\\x1b]0;x\\x07.json\r\n"


def read_terminal(fd: int) -> bytes:
    """What the terminal holds; Linux says EIO once the other side is closed and read."""
    try:
        return os.read(fd, 4096)
    except OSError:
        return b""


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
        """There is nothing to reset: exit status 3, and no file, lock or directory appears."""
        assert run("reset", "--path", str(session_path)) == 3
        assert not session_path.parent.exists()

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

    def test_delete_in_a_missing_directory_creates_nothing(self, tmp_path: Path) -> None:
        """A mistyped directory: exit status 3, and it is not created."""
        assert run("delete", "--yes", "--path", str(tmp_path / "typo" / "session.json")) == 3
        assert not (tmp_path / "typo").exists()

    def test_a_bad_app_name_is_a_usage_error(self, capsys: pytest.CaptureFixture[str]) -> None:
        """An app name that is not a plain directory name: exit status 2."""
        assert run("path", "--app", "../x") == 2
        assert "app_name" in capsys.readouterr().err


COMMANDS = [
    ["show"], ["show", "--json"], ["path"], ["reset"], ["new"], ["delete", "--yes"], ["export"]
]  # fmt: skip


class TestOptions:
    @pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
    def test_path_before_the_command(
        self,
        session_file: Path,
        user_home: Path,
        command: list[str],
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """`--path FILE COMMAND`, which --help shows, acts on FILE and on no other file."""
        said = read_json(session_file)["sessionId"], str(session_file)
        assert run("--path", str(session_file), *command) == 0
        printed = "".join(capsys.readouterr())
        assert any(part in printed for part in said)
        assert not (user_home / ".octocode").exists()

    @pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
    def test_app_before_the_command(
        self,
        session_file: Path,
        user_home: Path,
        monkeypatch: pytest.MonkeyPatch,
        command: list[str],
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """`--app NAME COMMAND` finds the file through $<NAME>_HOME, not octocode's."""
        monkeypatch.setenv("MY_TOOL_HOME", str(session_file.parent))
        said = read_json(session_file)["sessionId"], str(session_file)
        assert run("--app", "my-tool", *command) == 0
        printed = "".join(capsys.readouterr())
        assert any(part in printed for part in said)
        assert not (user_home / ".octocode").exists()

    def test_the_issues_example(self, tmp_path: Path, user_home: Path) -> None:
        """`aiosessionstore --path mine.json new` starts a session in mine.json."""
        done = cli("--path", "mine.json", "new", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert read_json(tmp_path / "mine.json")["stats"]["toolCalls"] == 0
        assert not (user_home / ".octocode").exists()

    def test_the_same_value_twice(self, session_file: Path) -> None:
        """Given before and after the command alike, the option names one file: no conflict."""
        assert run("--path", str(session_file), "reset", "--path", str(session_file)) == 0

    @pytest.mark.parametrize(
        "argv",
        [
            ["--path", "a.json", "new", "--path", "b.json"],
            ["new", "--path", "a.json", "--path", "b.json"],
            ["--path", "a.json", "--path", "b.json", "new"],
            ["--app", "one", "new", "--app", "two"],
            ["--path", "a.json", "--app", "one", "new"],
            ["new", "--path", "a.json", "--app", "octocode"],
            ["--app", "../x", "new"],
            ["--app", "a/b", "new"],
            ["new", "--path", ""],
            ["new", "--path", "a/"],
            ["new", "--pat", "a.json"],
            ["--json", "show"],
        ],
        ids=" ".join,
    )
    def test_a_conflict_is_refused(
        self,
        tmp_path: Path,
        user_home: Path,
        monkeypatch: pytest.MonkeyPatch,
        argv: list[str],
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Two files named, a path-like app, no file or an abbreviation: exit 2, nothing made."""
        monkeypatch.chdir(tmp_path)
        before = listing(tmp_path), os.listdir(user_home)
        assert run(*argv) == EXIT_CODES["usage"]
        assert (listing(tmp_path), os.listdir(user_home)) == before
        assert "error" in capsys.readouterr().err

    @pytest.mark.parametrize("spelling", ["{}", "{}/.", "{}/../session.json.lock", "{}//"])
    @pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
    def test_a_lock_file_is_not_a_session_file(
        self, session_file: Path, command: list[str], spelling: str
    ) -> None:
        """`--path session.json.lock`, however spelled, is exit 2: the lock file must stay put."""
        lock = session_file.with_name("session.json.lock")
        before = listing(session_file.parent), lock.stat().st_ino
        assert run(*command, "--path", spelling.format(lock)) == EXIT_CODES["usage"]
        assert (listing(session_file.parent), lock.stat().st_ino) == before

    def test_an_abbreviated_yes_does_not_delete(self, session_file: Path) -> None:
        """`delete --y` is not taken for --yes: a new option could one day share the prefix."""
        assert run("delete", "--y", "--path", str(session_file)) == EXIT_CODES["usage"]
        assert session_file.exists()

    def test_help_returns_rather_than_exits(self, capsys: pytest.CaptureFixture[str]) -> None:
        """main() returns argparse's statuses, so a caller in-process gets a number."""
        assert run("--help") == 0
        assert "exit statuses" in capsys.readouterr().out
        assert run("show", "--no-such-option") == EXIT_CODES["usage"]


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


HOLD_LOCK = """
import sys, filelock
lock = filelock.FileLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
sys.stdin.read()
"""


class TestVersion:
    def test_version_prints_the_packages_version(self, capsys: pytest.CaptureFixture[str]) -> None:
        """``--version`` names the installed package's version, as its metadata has it."""
        assert run("--version") == 0
        assert capsys.readouterr().out == f"aiosessionstore {version('aiosessionstore')}\n"


#: A session file as a store writes it, which export must give back byte for byte.
def stored_bytes(path: Path) -> bytes:
    return path.read_bytes()


def session_id(path: Path) -> str:
    value = read_json(path)["sessionId"]
    assert isinstance(value, str)
    return value


def newer(path: Path) -> Path:
    """A session file from a newer format version."""
    return write_session(path, version=9)


def corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{oops")
    return path


BAD_SOURCES = {"corrupt": (corrupt, "corrupt"), "newer": (newer, "newer")}


class TestExport:
    def test_stdout_is_the_files_bytes(self, session_file: Path) -> None:
        """To a pipe, export writes exactly the bytes the store wrote: no line break added."""
        done = cli("export", "--path", session_file)
        assert done.returncode == 0, done.stderr
        assert done.stdout == stored_bytes(session_file)

    def test_a_hand_written_file_comes_out_as_a_store_writes_it(self, session_path: Path) -> None:
        """Export is encode(record): the TypeScript tool's layout, whatever the file's own."""
        write_session(session_path, tools={"café": tool()}, theme={"dark": True})
        done = cli("export", "--path", session_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout == encode(decode(session_path.read_bytes()))
        assert "café" in done.stdout.decode()  # UTF-8, as JSON.stringify writes it, not \\u00e9

    def test_output_is_the_files_bytes_and_private(self, session_file: Path) -> None:
        """--output gets the same bytes, mode 0600, and leaves no temp file beside it."""
        output = session_file.parent / "out" / "copy.json"
        output.parent.mkdir()
        assert run("export", "--path", str(session_file), "--output", str(output)) == 0
        assert output.read_bytes() == stored_bytes(session_file)
        assert os.listdir(output.parent) == ["copy.json"]
        if sys.platform != "win32":
            assert output.stat().st_mode & 0o777 == 0o600

    def test_output_refuses_an_existing_file(self, session_file: Path, tmp_path: Path) -> None:
        """An existing --output file is exit status 6 and stays as it was; --force replaces it."""
        output = tmp_path / "copy.json"
        output.write_text("mine")
        argv = ["export", "--path", str(session_file), "--output", str(output)]
        assert run(*argv) == EXIT_CODES["exists"] == 6
        assert output.read_text() == "mine"
        assert sorted(os.listdir(tmp_path)) == ["copy.json", "home", "user"]
        assert run(*argv, "--force") == 0
        assert output.read_bytes() == stored_bytes(session_file)

    @posix_only
    def test_a_symlink_is_not_followed(self, session_file: Path, tmp_path: Path) -> None:
        """An --output that is a link is neither written through nor replaced, even with --force."""
        target = tmp_path / "target.json"
        target.write_text("theirs")
        link = tmp_path / "link.json"
        link.symlink_to(target)
        argv = ["export", "--path", str(session_file), "--output", str(link)]
        assert run(*argv) == EXIT_CODES["exists"]
        assert run(*argv, "--force") == EXIT_CODES["error"]
        assert link.is_symlink()
        assert target.read_text() == "theirs"

    def test_a_directory_is_not_replaced(self, session_file: Path, tmp_path: Path) -> None:
        """An --output that is a directory: exit 6, or 1 with --force, and it stays as it was."""
        directory = tmp_path / "out"
        directory.mkdir()
        argv = ["export", "--path", str(session_file), "--output", str(directory)]
        assert run(*argv) == EXIT_CODES["exists"]
        assert run(*argv, "--force") == EXIT_CODES["error"]
        assert directory.is_dir()
        assert os.listdir(directory) == []

    @pytest.mark.parametrize("spelling", ["{file}", "{dir}/../home/session.json", "{link}"])
    def test_the_session_file_itself_is_refused(
        self, session_file: Path, tmp_path: Path, spelling: str
    ) -> None:
        """--output naming the session file, however spelled, is exit 2 even with --force."""
        link = tmp_path / "alias.json"
        link.symlink_to(session_file)
        before = stored_bytes(session_file), listing(session_file.parent)
        output = spelling.format(file=session_file, dir=session_file.parent, link=link)
        argv = ["export", "--path", str(session_file), "--output", output, "--force"]
        assert run(*argv) == EXIT_CODES["usage"]
        assert (stored_bytes(session_file), listing(session_file.parent)) == before

    def test_a_lock_file_is_refused(self, session_file: Path) -> None:
        """--output session.json.lock with --force is exit 2: the lock file must stay put."""
        lock = session_file.with_name("session.json.lock")
        inode = lock.stat().st_ino
        argv = ["export", "--path", str(session_file), "--output", str(lock), "--force"]
        assert run(*argv) == EXIT_CODES["usage"]
        assert lock.stat().st_ino == inode

    @pytest.mark.parametrize(("make", "status"), BAD_SOURCES.values(), ids=BAD_SOURCES.keys())
    def test_a_bad_source_moves_nothing(
        self, session_path: Path, tmp_path: Path, make: Any, status: str
    ) -> None:
        """A corrupt or newer session: exit 4 or 5, the file where it was, no output made."""
        make(session_path)
        before = listing(session_path.parent), session_path.read_bytes()
        output = tmp_path / "copy.json"
        assert run("export", "--path", str(session_path), "-o", str(output)) == EXIT_CODES[status]
        assert (listing(session_path.parent), session_path.read_bytes()) == before
        assert not output.exists()

    def test_a_missing_session(self, session_path: Path, tmp_path: Path) -> None:
        """No session: exit 3, and neither the session's directory nor an output appears."""
        output = tmp_path / "copy.json"
        assert run("export", "--path", str(session_path), "-o", str(output)) == 3
        assert not session_path.parent.exists()
        assert not output.exists()

    @posix_only
    def test_a_terminal_gets_escapes(self, session_path: Path) -> None:
        """On a terminal, export shows the session as show --json does, escaped."""
        write_session(session_path, tools={"\x1b]0;x\x07": tool()})
        primary, secondary = os.openpty()
        try:
            done = cli("export", "--path", session_path, stdout=secondary)
        finally:
            os.close(secondary)
        shown = b""
        while chunk := read_terminal(primary):
            shown += chunk
        os.close(primary)
        assert done.returncode == 0, done.stderr
        assert b"\x1b" not in shown
        assert b"\\u001b]0;x\\u0007" in shown


def exported(path: Path, into: Path) -> Path:
    """The session exported through a real process, as a user would save it."""
    done = cli("export", "--path", path)
    assert done.returncode == 0, done.stderr
    into.write_bytes(done.stdout)
    return into


class TestImport:
    def test_export_then_import_round_trips(self, session_file: Path, tmp_path: Path) -> None:
        """Into an empty location (no directory yet): the same bytes, so the same id, stored."""
        saved = exported(session_file, tmp_path / "saved.json")
        target = tmp_path / "elsewhere" / "session.json"
        done = cli("import", "--path", target, saved)
        assert done.returncode == 0, done.stderr
        assert target.read_bytes() == stored_bytes(session_file)
        assert session_id(target) in done.stderr.decode()

    def test_an_existing_session_is_kept(self, session_file: Path, tmp_path: Path) -> None:
        """Over a valid session: exit 6, and it is left byte for byte as it was."""
        other = write_session(tmp_path / "other.json", session_id="other-id")
        before = stored_bytes(session_file), session_file.stat().st_mtime_ns
        assert run("import", "--path", str(session_file), str(other)) == EXIT_CODES["exists"]
        assert (stored_bytes(session_file), session_file.stat().st_mtime_ns) == before

    def test_force_replaces_it(self, session_file: Path, tmp_path: Path) -> None:
        """--force stores the imported session in place of a valid one, id and all."""
        other = write_session(tmp_path / "other.json", session_id="other-id", theme="dark")
        assert run("import", "--force", "--path", str(session_file), str(other)) == 0
        assert read_json(session_file) == read_json(other)

    def test_a_corrupt_session_is_moved_aside(self, session_path: Path, tmp_path: Path) -> None:
        """A corrupt session is no session: it is moved aside, as new does, and the import done."""
        corrupt(session_path)
        other = write_session(tmp_path / "other.json", session_id="other-id")
        assert run("import", "--path", str(session_path), str(other)) == 0
        assert session_id(session_path) == "other-id"
        (aside,) = session_path.parent.glob("session.json.corrupt-*")
        assert aside.read_text() == "{oops"

    @pytest.mark.parametrize(("make", "status"), BAD_SOURCES.values(), ids=BAD_SOURCES.keys())
    def test_a_bad_file_creates_nothing(
        self, tmp_path: Path, session_path: Path, make: Any, status: str
    ) -> None:
        """A corrupt or newer file to import: exit 4 or 5, it stays as it was, nothing is made."""
        source = make(tmp_path / "source" / "session.json")
        before = listing(source.parent), source.read_bytes()
        assert (
            run("import", "--force", "--path", str(session_path), str(source))
            == (EXIT_CODES[status])
        )
        assert (listing(source.parent), source.read_bytes()) == before
        assert not session_path.parent.exists()

    def test_a_bad_file_leaves_an_existing_session(
        self, session_file: Path, tmp_path: Path
    ) -> None:
        """Even with --force, a corrupt file to import changes nothing where it would go."""
        source = corrupt(tmp_path / "bad.json")
        before = stored_bytes(session_file), listing(session_file.parent)
        assert run("import", "--force", "--path", str(session_file), str(source)) == 4
        assert (stored_bytes(session_file), listing(session_file.parent)) == before

    def test_a_missing_file(self, tmp_path: Path, session_path: Path) -> None:
        """No file to import: exit 3, and nothing is made."""
        assert run("import", "--path", str(session_path), str(tmp_path / "nope.json")) == 3
        assert not session_path.parent.exists()

    def test_a_huge_file_is_refused_unread(self, tmp_path: Path, session_path: Path) -> None:
        """A file over the size limit is corrupt (exit 4), as the file backend judges one."""
        source = tmp_path / "huge.json"
        with source.open("wb") as out:
            out.truncate(_file.MAX_FILE_SIZE + 1)
        assert run("import", "--path", str(session_path), str(source)) == EXIT_CODES["corrupt"]
        assert not session_path.parent.exists()

    @posix_only
    def test_a_fifo_is_refused_without_waiting(self, tmp_path: Path, session_path: Path) -> None:
        """A FIFO to import is not opened (that would wait for a writer): exit 1."""
        source = tmp_path / "fifo"
        os.mkfifo(source)
        done = cli("import", "--path", session_path, source)
        assert done.returncode == EXIT_CODES["error"]
        assert b"FIFO" in done.stderr
        assert not session_path.parent.exists()

    @pytest.mark.parametrize("spelling", ["{file}", "{dir}/./session.json"])
    def test_the_session_file_itself_is_refused(self, session_file: Path, spelling: str) -> None:
        """Importing the session file into itself is exit 2, even with --force."""
        source = spelling.format(file=session_file, dir=session_file.parent)
        before = stored_bytes(session_file)
        assert run("import", "--force", "--path", str(session_file), source) == 2
        assert stored_bytes(session_file) == before

    def test_standard_input(self, session_file: Path, session_path: Path, tmp_path: Path) -> None:
        """`import -` reads the session from a pipe, judged as a file is."""
        target = tmp_path / "piped.json"
        done = cli("import", "--path", target, "-", stdin=None, input=stored_bytes(session_file))
        assert done.returncode == 0, done.stderr
        assert target.read_bytes() == stored_bytes(session_file)
        done = cli("import", "--path", tmp_path / "bad.json", "-", stdin=None, input=b"{oops")
        assert done.returncode == EXIT_CODES["corrupt"]
        assert not (tmp_path / "bad.json").exists()

    def test_the_change_refuses_any_record_but_its_own(self, session_file: Path) -> None:
        """Mode.IMPORT tells "none stored" by identity: an equal record found is one stored."""
        record = decode(stored_bytes(session_file))
        change = Change(Mode.IMPORT, Counts(), record.session.last_active_at, record, False)
        assert change.apply(change.base_when_missing("nowhere")) is record
        with pytest.raises(SessionExistsError):
            change.apply(decode(stored_bytes(session_file)))
        replace = Change(Mode.REPLACE, Counts(), record.session.last_active_at, record, False)
        assert replace.apply(decode(stored_bytes(session_file))) is record

    @pytest.mark.anyio
    async def test_while_a_store_is_open(self, session_path: Path, tmp_path: Path) -> None:
        """Refused over a live session; with --force, counts made afterwards land on the import."""
        source = write_session(tmp_path / "other.json", session_id="other-id")  # 3 tool calls
        argv = ["import", "--path", str(session_path), str(source)]
        async with AsyncSessionStore(session_path) as store:
            await store.increment_tool_calls(5)
            await store.flush()
            assert await anyio.to_thread.run_sync(lambda: run(*argv)) == EXIT_CODES["exists"]
            assert await anyio.to_thread.run_sync(lambda: run(*argv, "--force")) == 0
            await store.increment_tool_calls(2)
        document = await anyio.to_thread.run_sync(read_json, session_path)
        assert (document["sessionId"], document["stats"]["toolCalls"]) == ("other-id", 5)


@pytest.fixture
def memory(monkeypatch: pytest.MonkeyPatch) -> MemoryBackend:
    """--url memory://x (or $OCTOCODE_SESSION_URL) selects an in-memory backend."""
    backend = MemoryBackend()
    assert isinstance(backend, Backend)
    real = resolve_backend

    def resolve(
        path: str | None, url: str | None, given: Any, app_name: str, lock_timeout: float
    ) -> Backend:
        url = url or os.environ.get("OCTOCODE_SESSION_URL") if path is None else url
        if url == "memory://x":
            return backend
        return real(path, url, given, app_name, lock_timeout)

    monkeypatch.setattr(_cli, "resolve_backend", resolve)
    return backend


class TestUrl:
    @pytest.mark.parametrize(
        "argv",
        [
            ["--url", "memory://x", "--path", "a.json", "show"],
            ["show", "--url", "memory://x", "--path", "a.json"],
            ["--path", "a.json", "export", "--url", "memory://x"],
            ["--url", "memory://x", "show", "--url", "memory://y"],
            ["--url", "", "show"],
            ["--ur", "memory://x", "show"],
        ],
        ids=" ".join,
    )
    def test_a_conflict_is_refused(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        memory: MemoryBackend,
        argv: list[str],
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """--url with --path, two URLs, an empty or abbreviated one: exit 2, nothing made."""
        monkeypatch.chdir(tmp_path)
        before = listing(tmp_path)
        assert run(*argv) == EXIT_CODES["usage"]
        assert listing(tmp_path) == before
        assert memory.closed == 0
        assert "error" in capsys.readouterr().err

    def test_two_urls_are_not_quoted(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A URL may hold a password: the usage error does not repeat either URL."""
        argv = ["--url", "redis://:hunter2@a", "show", "--url", "redis://:hunter3@b"]
        assert run(*argv) == EXIT_CODES["usage"]
        assert "hunter" not in capsys.readouterr().err

    def test_an_unknown_scheme(self, tmp_path: Path) -> None:
        """A URL no backend takes: exit 2 and a message, its password masked, no traceback."""
        (tmp_path / "cwd").mkdir()
        done = cli("--url", "nosuch://user:hunter2@host/0", "show", cwd=tmp_path / "cwd")
        assert done.returncode == EXIT_CODES["usage"]
        assert b"not nosuch://" in done.stderr
        assert b"hunter2" not in done.stderr
        assert b"Traceback" not in done.stderr
        assert os.listdir(tmp_path / "cwd") == []

    def test_the_environment_variable(
        self,
        session_file: Path,
        user_home: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """$OCTOCODE_SESSION_URL is used without --path, and named when it is bad; --path wins."""
        monkeypatch.setenv("OCTOCODE_SESSION_URL", "nosuch://:hunter2@host")
        assert run("show") == EXIT_CODES["usage"]
        err = capsys.readouterr().err
        assert "$OCTOCODE_SESSION_URL" in err
        assert "hunter2" not in err
        assert run("show", "--path", str(session_file)) == 0
        assert os.listdir(user_home) == []

    @pytest.mark.parametrize("before", [True, False], ids=["before", "after"])
    @pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
    def test_every_command_takes_it(
        self,
        memory: MemoryBackend,
        session_file: Path,
        user_home: Path,
        before: bool,
        command: list[str],
    ) -> None:
        """--url before or after any command acts on that backend, and closes it once."""
        memory.data = stored_bytes(session_file)
        argv = ["--url", "memory://x", *command] if before else [*command, "--url", "memory://x"]
        expected = EXIT_CODES["usage"] if command == ["path"] else 0
        assert run(*argv) == expected
        assert memory.closed == 1
        assert not (user_home / ".octocode").exists()


class TestOtherBackends:
    def test_path_says_there_is_no_file(
        self,
        memory: MemoryBackend,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A session in no file has no path: exit 2, nothing on stdout, and why on stderr."""
        monkeypatch.setenv("OCTOCODE_SESSION_URL", "memory://x")
        assert run("path") == EXIT_CODES["usage"]
        out, err = capsys.readouterr()
        assert out == ""
        assert "session in memory, which is not a file" in err

    def test_show_names_the_store(
        self, memory: MemoryBackend, session_file: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The summary says where the session is with the backend's description."""
        memory.data = stored_bytes(session_file)
        assert run("show", "--url", "memory://x") == 0
        assert "store        session in memory" in capsys.readouterr().out.splitlines()

    def test_export_and_import(
        self,
        memory: MemoryBackend,
        session_file: Path,
        tmp_path: Path,
        capsysbinary: pytest.CaptureFixture[bytes],
    ) -> None:
        """A file imported into a backend is exported as the same bytes; a second import is 6."""
        assert run("import", "--url", "memory://x", str(session_file)) == 0
        assert run("import", "--url", "memory://x", str(session_file)) == EXIT_CODES["exists"]
        capsysbinary.readouterr()
        assert run("export", "--url", "memory://x") == 0
        assert capsysbinary.readouterr().out == stored_bytes(session_file)
        assert memory.closed == 3

    def test_a_failing_close_does_not_hide_the_commands_error(
        self, memory: MemoryBackend, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The command's own failure decides the exit status, even if closing fails too."""

        def close() -> None:
            raise SessionStoreError("connection reset while closing")

        monkeypatch.setattr(memory, "close", close)
        assert run("show", "--url", "memory://x") == EXIT_CODES["missing"]

    def test_reset_and_delete_of_nothing(self, memory: MemoryBackend) -> None:
        """With no session stored, reset and delete are exit 3, and the backend still closed."""
        assert run("reset", "--url", "memory://x") == EXIT_CODES["missing"]
        assert run("delete", "--yes", "--url", "memory://x") == EXIT_CODES["missing"]
        assert memory.closed == 2


# -- Redis: the same commands against a real redis-server -----------------------------------

BASE = "aiosessionstore:{octocode}"
SESSION = f"{BASE}:session"


@pytest.fixture
def direct(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client on the test's empty database, to look at (and spoil) the keys."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def value(client: redis.Redis, key: str | bytes = SESSION) -> bytes | None:
    data = client.get(key)
    assert data is None or isinstance(data, bytes)
    return data


def keys(client: redis.Redis) -> list[bytes]:
    found = [key for key in client.keys("*") if isinstance(key, bytes)]
    assert len(found) == client.dbsize()
    return sorted(found)


def with_password(url: str, userinfo: str) -> str:
    return url.replace("redis://", f"redis://{userinfo}@", 1)


class TestRedis:
    def test_show_and_show_json(
        self, redis_url: str, direct: redis.Redis, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """show is exit 3 and creates no key before new, then the summary and the stored JSON."""
        assert run("show", "--url", redis_url) == EXIT_CODES["missing"]
        assert keys(direct) == []
        assert run("new", "--url", redis_url) == 0
        stored = value(direct)
        assert stored is not None
        session = json.loads(stored)["sessionId"]
        capsys.readouterr()
        assert run("show", "--url", redis_url) == 0
        lines = capsys.readouterr().out.splitlines()
        assert f"session      {session}" in lines
        assert f"store        {redis_url} key {BASE}" in lines
        assert run("show", "--json", "--url", redis_url) == 0
        assert json.loads(capsys.readouterr().out) == json.loads(stored)
        assert value(direct) == stored

    def test_reset_and_new(self, redis_url: str, direct: redis.Redis, session_file: Path) -> None:
        """reset keeps the id and zeroes counts and tools; new gives a new id; none: exit 3."""
        assert run("reset", "--url", redis_url) == EXIT_CODES["missing"]
        assert keys(direct) == []
        direct.set(SESSION, stored_bytes(session_file))
        assert run("reset", "--url", redis_url) == 0
        document = json.loads(value(direct) or b"")
        assert document["sessionId"] == session_id(session_file)
        assert set(document["stats"].values()) == {0}
        assert "tools" not in document
        assert run("new", "--url", redis_url) == 0
        assert json.loads(value(direct) or b"")["sessionId"] != session_id(session_file)

    def test_no_session_is_said_alike_by_every_command(
        self, redis_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """show, reset and delete of a session that is not stored all say "no session in"
        the store, by the same words."""
        said = []
        for command in (["show"], ["reset"], ["delete", "--yes"]):
            assert run(*command, "--url", redis_url) == EXIT_CODES["missing"]
            said.append(capsys.readouterr().err.split(": ", 1)[1])
        assert said == [f"no session in {redis_url} key {BASE}\n"] * 3

    def test_delete(self, redis_url: str, direct: redis.Redis, session_file: Path) -> None:
        """delete asks first, --yes deletes the key, and a second delete finds nothing (3)."""
        direct.set(SESSION, stored_bytes(session_file))
        assert run("delete", "--url", redis_url, answer="n\n") == EXIT_CODES["error"]
        assert value(direct) == stored_bytes(session_file)
        assert run("delete", "--yes", "--url", redis_url) == 0
        assert value(direct) is None
        assert run("delete", "--yes", "--url", redis_url) == EXIT_CODES["missing"]

    def test_path_is_a_usage_error(
        self, redis_url: str, direct: redis.Redis, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A session in Redis has no path: exit 2, nothing on stdout, and the store named."""
        assert run("path", "--url", redis_url) == EXIT_CODES["usage"]
        out, err = capsys.readouterr()
        assert out == ""
        assert f"{redis_url} key {BASE}, which is not a file" in err
        assert keys(direct) == []

    @pytest.mark.anyio
    async def test_export_is_the_stored_bytes(
        self, redis_url: str, direct: redis.Redis, tmp_path: Path
    ) -> None:
        """Export gives the value a store wrote, byte for byte: what the file backend writes."""
        async with AsyncSessionStore(url=redis_url, handle_signals=False) as store:
            await store.increment_prompt_calls(2)
            async with store.tool_call("café"):
                pass
        done = await anyio.to_thread.run_sync(lambda: cli("export", "--url", redis_url))
        assert done.returncode == 0, done.stderr
        assert done.stdout == value(direct)
        saved = tmp_path / "saved.json"
        saved.write_bytes(done.stdout)
        file = tmp_path / "file" / "session.json"
        status = await anyio.to_thread.run_sync(
            lambda: run("import", "--path", str(file), str(saved))
        )
        assert status == 0
        assert file.read_bytes() == done.stdout

    def test_a_file_round_trips_through_redis(
        self, redis_url: str, direct: redis.Redis, session_file: Path
    ) -> None:
        """A session file imported into Redis is stored and exported as the same bytes and id."""
        done = cli("import", "--url", redis_url, session_file)
        assert done.returncode == 0, done.stderr
        assert session_id(session_file) in done.stderr.decode()
        assert value(direct) == stored_bytes(session_file)
        done = cli("export", "--url", redis_url)
        assert done.returncode == 0, done.stderr
        assert done.stdout == stored_bytes(session_file)
        assert json.loads(done.stdout)["sessionId"] == session_id(session_file)

    def test_an_existing_session_is_kept(
        self, redis_url: str, direct: redis.Redis, session_file: Path, tmp_path: Path
    ) -> None:
        """Over a valid session: exit 6, the key and revision unchanged; --force replaces it."""
        direct.set(SESSION, stored_bytes(session_file))
        assert run("reset", "--url", redis_url) == 0  # a revision, as a store leaves one
        other = write_session(tmp_path / "other.json", session_id="other-id", theme="dark")
        before = value(direct), value(direct, f"{BASE}:rev")
        argv = ["import", "--url", redis_url, str(other)]
        assert run(*argv) == EXIT_CODES["exists"] == 6
        assert (value(direct), value(direct, f"{BASE}:rev")) == before
        assert run(*argv, "--force") == 0
        assert value(direct) == encode(decode(other.read_bytes()))
        assert json.loads(value(direct) or b"")["theme"] == "dark"

    @pytest.mark.anyio
    async def test_a_refused_import_folds_nothing(
        self, redis_url: str, direct: redis.Redis, tmp_path: Path
    ) -> None:
        """Refused over a session with flushes not yet folded in: every key as it was."""
        async with AsyncSessionStore(url=redis_url, handle_signals=False) as store:
            for count in (3, 4):
                await store.increment_tool_calls(count)
                await store.flush()
            assert direct.llen(f"{BASE}:deltas") == 2
            before = {key: direct.dump(key) for key in keys(direct)}
            other = write_session(tmp_path / "other.json", session_id="other-id")
            argv = ["import", "--url", redis_url, str(other)]
            status = await anyio.to_thread.run_sync(lambda: run(*argv))
            assert status == EXIT_CODES["exists"]
            assert {key: direct.dump(key) for key in keys(direct)} == before

    @pytest.mark.parametrize(("make", "status"), BAD_SOURCES.values(), ids=BAD_SOURCES.keys())
    def test_a_bad_file_creates_no_key(
        self, redis_url: str, direct: redis.Redis, tmp_path: Path, make: Any, status: str
    ) -> None:
        """A corrupt or newer file to import into Redis: exit 4 or 5, and no key at all."""
        source = make(tmp_path / "source.json")
        assert run("import", "--force", "--url", redis_url, str(source)) == EXIT_CODES[status]
        assert keys(direct) == []

    @pytest.mark.parametrize(
        ("stored", "status"),
        [(b"{oops", "corrupt"), (json.dumps({"version": 9}).encode(), "newer")],
        ids=["corrupt", "newer"],
    )
    @pytest.mark.parametrize("command", [["export"], ["show"], ["show", "--json"]], ids=" ".join)
    def test_a_bad_value_moves_nothing(
        self,
        redis_url: str,
        direct: redis.Redis,
        stored: bytes,
        status: str,
        command: list[str],
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A corrupt or newer value in Redis: exit 4 or 5, nothing printed, and nothing moved."""
        direct.set(SESSION, stored)
        assert run(*command, "--url", redis_url) == EXIT_CODES[status]
        assert capsys.readouterr().out == ""
        assert (keys(direct), value(direct)) == ([SESSION.encode()], stored)

    @pytest.mark.parametrize("force", [[], ["--force"]], ids=["plain", "force"])
    def test_import_moves_a_corrupt_value_aside(
        self, redis_url: str, direct: redis.Redis, tmp_path: Path, force: list[str]
    ) -> None:
        """import over a corrupt value moves it to a corrupt-* key, then stores the session."""
        direct.set(SESSION, b"{oops")
        other = write_session(tmp_path / "other.json", session_id="other-id")
        assert run("import", *force, "--url", redis_url, str(other)) == 0
        assert json.loads(value(direct) or b"")["sessionId"] == "other-id"
        (aside,) = direct.keys(f"{SESSION}:corrupt-*")
        assert value(direct, aside) == b"{oops"

    def test_the_environment_variable(
        self,
        redis_url: str,
        direct: redis.Redis,
        session_file: Path,
        user_home: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """$OCTOCODE_SESSION_URL puts every command in Redis with no options; --path wins."""
        monkeypatch.setenv("OCTOCODE_SESSION_URL", redis_url)
        assert run("new") == 0
        in_redis = json.loads(value(direct) or b"")["sessionId"]
        assert os.listdir(user_home) == []
        capsys.readouterr()
        assert run("show") == 0
        assert f"session      {in_redis}" in capsys.readouterr().out
        assert run("show", "--path", str(session_file)) == 0
        assert f"session      {session_id(session_file)}" in capsys.readouterr().out
        assert run("reset", "--path", str(session_file)) == 0
        assert read_json(session_file)["stats"]["toolCalls"] == 0
        assert json.loads(value(direct) or b"")["sessionId"] == in_redis
        assert run("path") == EXIT_CODES["usage"]

    @pytest.mark.parametrize("how", ["acl", "requirepass"])
    def test_no_password_in_any_output(
        self,
        redis_url: str,
        direct: redis.Redis,
        session_file: Path,
        how: str,
        capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """With a password set on the server, no command prints it, not even in an error."""
        secret, wrong, piece = "pw-S3cret-9f2", "pw-Wr0ng-7a1", "pw-Pi3ce-4c8"
        user = "fleet" if how == "acl" else ""
        good, bad = (with_password(redis_url, f"{user}:{pw}") for pw in (secret, wrong))
        if how == "acl":
            direct.acl_setuser("fleet", enabled=True, passwords=[f"+{secret}"], keys=["*"],
                               commands=["+@all"])  # fmt: skip
        else:
            direct.config_set("requirepass", secret)
        try:
            runs: list[tuple[list[str], int]] = [
                (["new", "--url", good], 0),
                (["show", "--url", good], 0),
                (["export", "--url", good], 0),
                (["import", "--url", good, str(session_file)], EXIT_CODES["exists"]),
                (["path", "--url", good], EXIT_CODES["usage"]),
                (["reset", "--url", bad], EXIT_CODES["error"]),
                (["show", "--url", bad], EXIT_CODES["error"]),
                (["--url", good, "show", "--url", bad], EXIT_CODES["usage"]),
                (["show", "--url", good.replace(secret, f"{piece}/{secret}")], EXIT_CODES["usage"]),
                (["show", "--url", good + "?no_such_option=1"], EXIT_CODES["usage"]),
            ]
            # In this process, what the library logs is in caplog rather than on stderr; the
            # two runs in a process of their own below go through the console script's all.
            for argv, status in runs:
                assert run(*argv) == status, (argv, capsys.readouterr().err)
                out, err = capsys.readouterr()
                for text in (out, err, caplog.text):
                    for password in (secret, wrong, piece):
                        assert password not in text
                assert "Traceback" not in err
            env = os.environ | {"OCTOCODE_SESSION_URL": bad}
            done = cli("show", env=env)
            assert done.returncode == EXIT_CODES["error"]
            assert b"AuthenticationError" in done.stderr
            assert wrong.encode() not in done.stdout + done.stderr
            direct.set(SESSION, b"{oops")
            done = cli("show", "--url", good)
            assert done.returncode == EXIT_CODES["corrupt"]
            assert secret.encode() not in done.stdout + done.stderr
        finally:
            if how == "acl":
                direct.acl_deluser("fleet")
            else:
                direct.config_set("requirepass", "")
        assert direct.ping()

    @pytest.mark.parametrize(
        "command", [["show"], ["export"], ["reset"], ["new"], ["delete", "--yes"], ["import"]],
        ids=" ".join,
    )  # fmt: skip
    def test_unreachable(
        self,
        session_file: Path,
        command: list[str],
        capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """No server at the port: exit 1, one clear line, no traceback, no password."""
        port = free_port()
        url = f"redis://user:hunter2@127.0.0.1:{port}/0"
        argv = [*command, str(session_file)] if command == ["import"] else command
        assert run(*argv, "--url", url) == EXIT_CODES["error"]
        out, err = capsys.readouterr()
        assert out == ""
        assert_unreachable(err, port)
        assert caplog.records == []  # the console script would print each on stderr

    def test_unreachable_from_the_console(self, session_file: Path) -> None:
        """The same in a process of its own: exit 1 and only that line on stderr."""
        port = free_port()
        done = cli("show", "--url", f"redis://user:hunter2@127.0.0.1:{port}/0")
        assert done.returncode == EXIT_CODES["error"], done.stderr
        assert done.stdout == b""
        assert_unreachable(done.stderr.decode(), port)


def assert_unreachable(err: str, port: int) -> None:
    """One clear line on stderr that names the server, never the password; no traceback."""
    assert err.startswith(f"aiosessionstore: cannot use redis://127.0.0.1:{port}/0 key {BASE}")
    assert "ConnectionError" in err
    assert err.count("\n") == 1
    assert "hunter2" not in err
    assert "Traceback" not in err
