"""Shared fixtures: the asyncio backend, an injected clock, and a guard against blocking I/O."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


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
