"""An asyncio-native, process-safe persistent session store for MCP servers and CLIs."""

from __future__ import annotations

from ._errors import (
    LockTimeoutError,
    SessionStoreError,
    StoreClosedError,
    UnsupportedVersionError,
)
from ._session import Session, SessionStats, ToolStats
from ._store import AsyncSessionStore
from ._tools import ToolCall

__all__ = (
    "AsyncSessionStore",
    "LockTimeoutError",
    "Session",
    "SessionStats",
    "SessionStoreError",
    "StoreClosedError",
    "ToolCall",
    "ToolStats",
    "UnsupportedVersionError",
)

__version__ = "0.1.0"
