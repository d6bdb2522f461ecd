"""The seam between a store and where its session lives: a file, or Redis.

A backend is small and blocking on purpose. The store calls it on its own thread, one call
at a time and in order, so a backend needs no locking of its own; the exactly-once logic
(which counts a write took, when a failed one is sent again) lives above it, in the store's
writer, the same for every backend.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ._change import Change
from ._session import Record

__all__ = ("Backend",)


@runtime_checkable
class Backend(Protocol):
    """Where one session is stored, shared by every store that uses the same place.

    Errors are ``SessionStoreError``s. A ``commit`` that raises must either not have been
    applied, or be one whose ``change.number`` the backend remembers: the writer sends the
    same change again, and it must then be applied once in all.
    """

    #: Where the session is, for messages and logs: no secrets.
    description: str

    def open(self, change: Change) -> Record:
        """A store's first write: ``commit``, and any check of the setup worth a warning."""
        ...

    def commit(self, change: Change) -> Record:
        """Apply ``change`` atomically against every other writer; return what is stored.

        A missing session is built from ``change.base_when_missing``; a corrupt one is moved
        aside (never overwritten) and rebuilt from ``change.base_when_corrupt``; a session
        of a newer format raises ``UnsupportedVersionError`` and is left as it is.
        """
        ...

    def read(self) -> Record:
        """The stored session; ``SessionNotFoundError`` if none, ``CorruptSessionError``
        (after moving it aside) if corrupt."""
        ...

    def peek(self) -> Record:
        """As ``read``, for a reader that must change nothing: a corrupt one stays put."""
        ...

    def remove(self) -> bool:
        """Delete the session; True if there was one."""
        ...

    def close(self) -> None:
        """Release connections and the like; called once, on the store's thread."""
        ...
