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

from aiosessionstore import SessionNotFoundError, SessionStoreError
from aiosessionstore._backend import Backend
from aiosessionstore._change import Change
from aiosessionstore._codec import decode, encode
from aiosessionstore._file import FileBackend
from aiosessionstore._session import Record

#: Worker processes for the process, signal and crash tests: ``workers.py MODE PATH ...``.
WORKER = Path(__file__).with_name("workers.py")

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals, fork and files")


@pytest.fixture
def anyio_backend() -> str:
    """The store hops to its thread and back through asyncio's loop (and its lock is an
    asyncio.Lock), so asyncio is the one backend to test."""
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


class Interposed(FileBackend):
    """A real file backend that a test can hold, fail or count from the store's thread:
    ``before`` runs there ahead of each write (the first one too), as a slow or full disk
    would."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.before: Callable[[], None] | None = None
        self.calls = 0
        self.written = 0
        self._changed = threading.Condition()  # told from the store's thread

    def open(self, change: Change) -> Record:
        return self.commit(change)

    def commit(self, change: Change) -> Record:
        self.calls += 1
        if self.before is not None:
            self.before()
        record = super().commit(change)
        with self._changed:
            self.written += 1
            self._changed.notify_all()
        return record

    def fail_first(self, failures: int, message: str = "disk on fire") -> None:
        """Make the next ``failures`` writes fail, as a full disk would."""
        left = [failures]

        def fail() -> None:
            if left[0] > 0:
                left[0] -= 1
                raise SessionStoreError(message)

        self.before = fail

    def hold(self, started: threading.Event, release: threading.Event) -> None:
        """Make each write say it started, then wait for ``release`` before it goes on."""

        def held() -> None:
            started.set()
            release.wait(30)

        self.before = held

    async def wait_for_writes(self, count: int) -> None:
        """Wait until ``count`` writes in all have landed (the store's open is the first)."""

        def wait() -> bool:
            with self._changed:
                return self._changed.wait_for(lambda: self.written >= count, 30)

        assert await anyio.to_thread.run_sync(wait), f"{self.written} of {count} writes in 30 s"


@pytest.fixture
def interposed(session_path: Path) -> Interposed:
    """A file backend at ``session_path`` whose writes the test can hold or fail."""
    return Interposed(session_path)


class MemoryBackend:
    """A session held in memory: the Backend protocol in its least, for tests of the store's
    own logic (and proof that the seam needs no file). Remembers numbered changes."""

    description = "session in memory"

    def __init__(self) -> None:
        self.data: bytes | None = None
        self.applied: dict[str, int] = {}
        self.closed = 0
        self._mutex = threading.Lock()

    def open(self, change: Change) -> Record:
        return self.commit(change)

    def commit(self, change: Change) -> Record:
        with self._mutex:
            if change.number and self.applied.get(change.writer, 0) >= change.number:
                return self.peek()  # applied already: its reply was lost
            base = change.base_when_missing(self.description) if self.data is None else self.peek()
            record = change.apply(base)
            self.data = encode(record)
            self.applied[change.writer] = change.number
            return record

    def read(self) -> Record:
        return self.peek()

    def peek(self) -> Record:
        if self.data is None:
            raise SessionNotFoundError(f"no {self.description}")
        return decode(self.data)

    def remove(self) -> bool:
        with self._mutex:
            existed, self.data = self.data is not None, None
            return existed

    def close(self) -> None:
        self.closed += 1


class RepliesLost(MemoryBackend):
    """A backend that applies the first ``losses`` writes and then fails them, as a
    connection that drops after the server applied a write but before its reply came."""

    def __init__(self, losses: int) -> None:
        super().__init__()
        self.losses = losses
        self.calls = 0

    def commit(self, change: Change) -> Record:
        self.calls += 1
        record = super().commit(change)
        if self.losses > 0:
            self.losses -= 1
            raise SessionStoreError("connection lost before the reply")
        return record


class Faulty:
    """A real backend behind a switch: while ``failing``, every call but ``close`` raises
    before it reaches the backend, as an unreachable server or a full disk would."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.description = backend.description
        self.failing = False

    def _check(self) -> None:
        if self.failing:
            raise SessionStoreError(f"{self.description} is out of reach")

    def open(self, change: Change) -> Record:
        self._check()
        return self.backend.open(change)

    def commit(self, change: Change) -> Record:
        self._check()
        return self.backend.commit(change)

    def read(self) -> Record:
        self._check()
        return self.backend.read()

    def peek(self) -> Record:
        self._check()
        return self.backend.peek()

    def remove(self) -> bool:
        self._check()
        return self.backend.remove()

    def close(self) -> None:
        self.backend.close()


class Place:
    """One place a session lives, as the shared behaviour suite sees it: new backends on it,
    and its raw bytes, to plant bad data and to find what was set aside."""

    kind = ""

    def backend(self) -> Backend:
        """A new backend on this place, as a new process would open."""
        raise NotImplementedError

    def put(self, data: bytes) -> None:
        raise NotImplementedError

    def get(self) -> bytes | None:
        raise NotImplementedError

    def set_aside(self) -> list[bytes]:
        """What was moved aside, oldest first."""
        raise NotImplementedError


class FilePlace(Place):
    kind = "file"

    def __init__(self, path: Path) -> None:
        self.path = path

    def backend(self) -> Backend:
        return FileBackend(self.path)

    def put(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_bytes(data)

    def get(self) -> bytes | None:
        return self.path.read_bytes() if self.path.exists() else None

    def set_aside(self) -> list[bytes]:
        return [p.read_bytes() for p in sorted(self.path.parent.glob("session.json.corrupt-*"))]


def _file_place(tmp_path: Path) -> Place:
    return FilePlace(tmp_path / "home" / "session.json")


DELTAS_KEY = "aiosessionstore:{octocode}:deltas"


def redis_stored(raw: Any, base: str = "aiosessionstore:{octocode}") -> Record | None:
    """The session in Redis, as a store reads it: ``:session`` with ``:deltas`` folded in."""
    from aiosessionstore._delta import fold, read_delta

    with raw.pipeline(transaction=True) as both:  # at one moment: a fold may be under way
        both.get(f"{base}:session")
        both.lrange(f"{base}:deltas", 0, -1)
        data, entries = both.execute()
    return fold(None if data is None else decode(data), [read_delta(entry) for entry in entries])


def before_script(
    monkeypatch: pytest.MonkeyPatch, backend: Any, script: str, action: Callable[[], object]
) -> list[object]:
    """Run ``action`` (blocking, on a thread of its own) once, just before ``backend`` next
    sends its script ``script`` (as in "_rewrite_script"): a write of another store's that
    lands between this backend's read and its compare-and-set. The list holds what it gave."""
    sent = getattr(backend, script)
    call = backend._call
    done: list[object] = []

    async def interposed(which: Any, *arguments: Any) -> Any:
        if which is sent and not done:
            done.append(await asyncio.to_thread(action))
        return await call(which, *arguments)

    monkeypatch.setattr(backend, "_call", interposed)
    return done


async def load_the_merge_script(store: Any) -> None:
    """Flush one tool call, so that the server knows the merge script: a reply lost after
    it is the script's, not the NOSCRIPT that EVALSHA gets from a server that was never
    sent it (which applied nothing)."""
    await store.increment_tool_calls()
    await store.flush()


class RedisPlace(Place):
    """The session of app ``octocode`` in a fresh Redis database."""

    kind = "redis"
    key = "aiosessionstore:{octocode}:session"

    def __init__(self, url: str) -> None:
        import redis

        self.url = url
        self.raw = redis.Redis.from_url(url)

    def backend(self) -> Backend:
        from aiosessionstore.redis import RedisBackend

        return RedisBackend.from_url(self.url)

    def put(self, data: bytes) -> None:
        self.raw.set(self.key, data)

    def get(self) -> bytes | None:
        """The session as a store sees it: the stored value with the deltas folded in (the
        value itself where there are none)."""
        with self.raw.pipeline(transaction=True) as both:
            both.get(self.key)
            both.llen(DELTAS_KEY)
            data, count = both.execute()
        assert data is None or isinstance(data, bytes)
        if not count:
            return data
        record = redis_stored(self.raw)
        return None if record is None else encode(record)

    def set_aside(self) -> list[bytes]:
        keys = sorted(self.raw.scan_iter(match=self.key + ":corrupt-*"))
        values = [self.raw.get(key) for key in keys]
        assert all(isinstance(value, bytes) for value in values)
        return values  # type: ignore[return-value]


PLACES: dict[str, Callable[[pytest.FixtureRequest, Path], Place]] = {
    "file": lambda request, tmp_path: _file_place(tmp_path),
    "redis": lambda request, tmp_path: RedisPlace(request.getfixturevalue("redis_url")),
}


@pytest.fixture(params=list(PLACES))
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Place:
    """Each backend that passes the shared behaviour suite, on a place of its own."""
    return PLACES[request.param](request, tmp_path)


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
    redis_server.command("FLUSHALL")
    url: str = redis_server.url
    return url


@pytest.fixture(scope="session", autouse=True)
def redis_cluster_launched(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """The cluster's nodes, launched with the session's first test if a test will use them:
    no node says its cluster is ok sooner than 2 s after it started, and so those 2 s pass
    while other tests run. What went wrong, if anything, is for that test to raise."""
    from .servers import RedisCluster, redis_server_path

    items = request.session.items
    if redis_server_path() is None or not any(
        "redis_cluster" in getattr(item, "fixturenames", ()) for item in items
    ):
        yield None
        return
    try:
        cluster = RedisCluster(tmp_path_factory.mktemp("cluster")).launch()
    except Exception as exc:
        yield exc
        return
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def redis_cluster(
    redis_cluster_launched: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """Three primaries joined into a cluster, for the whole test session."""
    _need_redis_server()
    if isinstance(redis_cluster_launched, Exception):
        raise redis_cluster_launched
    if redis_cluster_launched is not None:
        redis_cluster_launched.wait_until_ok()
        yield redis_cluster_launched
        return
    from .servers import RedisCluster  # asked for by no test collected, yet here

    cluster = RedisCluster(tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.stop()
