"""Shared helpers: the asyncio backend, an injected clock, worker processes, reading the file,
observing the store's transactions, and a guard against blocking I/O on the event loop."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from aiosessionstore import SessionStoreError, _file

#: Worker processes for the process, signal and crash tests: ``workers.py MODE PATH ...``.
WORKER = Path(__file__).with_name("workers.py")

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals, fork and files")


@pytest.fixture
def anyio_backend() -> str:
    """aiofiles runs on asyncio's executor, so asyncio is the one backend to test."""
    return "asyncio"


class FakeClock:
    """A settable time source: tests decide what ``now`` is."""

    def __init__(self, now: float = 1_764_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def session_path(tmp_path: Path) -> Path:
    return tmp_path / "home" / "session.json"


def read_json(path: Path) -> dict[str, Any]:
    """The session file as the TypeScript tool would parse it."""
    document = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


async def read_on_disk(path: Path) -> dict[str, Any]:
    """``read_json`` from a test running on the event loop, off its thread."""
    return await anyio.to_thread.run_sync(read_json, path)


def tool_calls_on_disk(path: Path) -> int:
    count = read_json(path)["stats"]["toolCalls"]
    assert isinstance(count, int)
    return count


#: Workers started by the running test; any still alive at its end are killed.
_workers: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def no_worker_outlives_its_test() -> Iterator[None]:
    """A test that fails half way must not leave a worker behind, spinning or waiting."""
    yield
    while _workers:
        worker = _workers.pop()
        if worker.poll() is None:
            worker.kill()
            worker.communicate()


def start_worker(mode: str, *arguments: object, **options: Any) -> subprocess.Popen[str]:
    """Start ``workers.py MODE ARGUMENTS`` with pipes on all three streams."""
    worker = subprocess.Popen(
        [sys.executable, *options.pop("python_options", ()), str(WORKER), mode,
         *map(str, arguments)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        **options,
    )  # fmt: skip
    _workers.append(worker)
    return worker


def wait_for_line(worker: subprocess.Popen[str], expected: str) -> None:
    """Block until the worker prints ``expected`` on a line of its own: its readiness."""
    assert worker.stdout is not None
    line = worker.stdout.readline()
    if line != expected + "\n":
        worker.kill()
        _, err = worker.communicate(timeout=30)
        raise AssertionError(f"expected {expected!r} from the worker, got {line!r}: {err}")


def replace_transaction(
    monkeypatch: pytest.MonkeyPatch, make: Callable[[Callable[..., Any]], Callable[..., Any]]
) -> None:
    """Swap the store's file transaction for ``make(real_commit)``; it still runs on the
    store's thread, so the stand-in can hold or fail a real write."""
    monkeypatch.setattr(_file, "commit", make(_file.commit))


def failing_with(message: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A stand-in transaction that always fails, as a full or read-only disk would."""

    def make(commit: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any) -> Any:
            raise SessionStoreError(message)

        return run

    return make


class Transactions:
    """The store's file transactions, observed from its thread: counted, and made to fail
    the first ``failures`` times, as a full disk would."""

    def __init__(self, failures: int = 0) -> None:
        self.calls = 0
        self._failures = failures
        self._wrote = threading.Event()  # set from the store's thread, so a threading.Event

    def wrap(self, commit: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any) -> Any:
            self.calls += 1
            if self.calls <= self._failures:
                raise SessionStoreError("disk on fire")
            result = commit(*args)
            self._wrote.set()
            return result

        return run

    async def wait_for_a_write(self) -> None:
        assert await anyio.to_thread.run_sync(self._wrote.wait, 30), "no write landed in 30 s"


def _blocking_guard(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return original(*args, **kwargs)  # a worker thread, or no loop at all: fine
        if args and "__pycache__" in os.fspath(args[0]):
            return original(*args, **kwargs)  # a lazy import caching its bytecode
        raise AssertionError(f"blocking call os.{name}() made on the event loop thread")

    return guarded


@pytest.fixture(autouse=True)
def no_blocking_file_io_on_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any test in which the event loop thread itself opens, syncs or replaces a file."""
    for name in ("open", "fsync", "replace", "rename", "unlink"):
        monkeypatch.setattr(os, name, _blocking_guard(name, getattr(os, name)))


# -- Redis: real servers, started once per session ------------------------------------------


def _need_redis_server() -> None:
    """Skip where redis-server is missing, except in CI, which must run these tests."""
    from .servers import redis_server_path

    if redis_server_path() is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed; .ci/run installs it")
        pytest.skip("redis-server is not installed")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One redis-server, without persistence, for the whole test session."""
    _need_redis_server()
    from .servers import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: Any) -> str:
    """The URL of an empty database on the session's server (FLUSHALL before each test)."""
    subprocess.run(
        ["redis-cli", "-p", str(redis_server.port), "FLUSHALL"],
        check=True, capture_output=True, timeout=10,
    )  # fmt: skip
    url: str = redis_server.url
    return url


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Three primaries joined into a cluster, for the whole test session."""
    _need_redis_server()
    from .servers import RedisCluster

    cluster = RedisCluster(tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.stop()
