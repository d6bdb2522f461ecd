"""The exceptions aiosessionstore raises, all under one base class."""

from __future__ import annotations

from pathlib import Path

__all__ = (
    "CorruptSessionError",
    "LockTimeoutError",
    "SessionExistsError",
    "SessionNotFoundError",
    "SessionStoreError",
    "StoreClosedError",
    "UnsupportedVersionError",
)


class SessionStoreError(Exception):
    """Base class: catch this to handle every failure of the session store."""


class StoreClosedError(SessionStoreError):
    """The store is not open: enter ``async with store`` first, and use it only inside."""


class UnsupportedVersionError(SessionStoreError):
    """The session file was written by a newer format version; it is left untouched."""


class CorruptSessionError(SessionStoreError):
    """The session file is not a valid session; it is moved aside, never deleted."""

    def __init__(self, message: str, quarantined_to: Path | None = None) -> None:
        super().__init__(message)
        #: Where the corrupt file was moved, once it has been.
        self.quarantined_to = quarantined_to


class SessionNotFoundError(SessionStoreError):
    """There is no session file where one was expected."""


class SessionExistsError(SessionStoreError):
    """An import found a valid session where it would store one; nothing was changed."""


class LockTimeoutError(SessionStoreError):
    """Another process held the session's lock file for longer than the lock timeout."""
