"""An asyncio-native, process-safe persistent session store for MCP servers and CLIs."""

from __future__ import annotations

from ._errors import (
    LockTimeoutError,
    SessionStoreError,
    StoreClosedError,
    UnsupportedVersionError,
)
from ._session import Session, SessionStats
from ._store import AsyncSessionStore

__all__ = (
    "AsyncSessionStore",
    "LockTimeoutError",
    "Session",
    "SessionStats",
    "SessionStoreError",
    "StoreClosedError",
    "UnsupportedVersionError",
)

__version__ = "0.1.0"
