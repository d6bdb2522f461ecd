"""An asyncio-native, process-safe persistent session store for MCP servers and CLIs."""

from __future__ import annotations

from ._backend import Backend
from ._errors import (
    CorruptSessionError,
    LockTimeoutError,
    SessionExistsError,
    SessionNotFoundError,
    SessionStoreError,
    StoreClosedError,
    UnsupportedVersionError,
)
from ._file import FileBackend
from ._mcp import SessionLifespan, SessionState, session_lifespan, session_store
from ._session import ClientStats, Session, SessionStats, ToolStats
from ._store import AsyncSessionStore
from ._tools import ToolCall
from ._version import __version__ as __version__

__all__ = (
    "AsyncSessionStore",
    "Backend",
    "ClientStats",
    "CorruptSessionError",
    "FileBackend",
    "LockTimeoutError",
    "Session",
    "SessionExistsError",
    "SessionLifespan",
    "SessionNotFoundError",
    "SessionState",
    "SessionStats",
    "SessionStoreError",
    "StoreClosedError",
    "ToolCall",
    "ToolStats",
    "UnsupportedVersionError",
    "session_lifespan",
    "session_store",
)
