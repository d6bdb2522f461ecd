"""What one write does to a session, whatever holds it: the merge rules, in one place.

A backend finds the stored session (or finds none, or a corrupt one) and asks the change for
the record to store instead; it never decides by itself what a write means.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any

from ._errors import SessionExistsError, SessionNotFoundError
from ._names import DEFAULT_MAX_TOOLS, OTHER, add_counts
from ._session import Counts, Record, Session, SessionStats, shown

__all__ = ("Change", "Mode")


class Mode(enum.Enum):
    """What a change does to the session it finds."""

    MERGE = "merge"  # add our pending counts
    RESET = "reset"  # zero the counts, keep the id
    NEW = "new"  # start a new session id
    IMPORT = "import"  # store ``known`` where no valid session is, else SessionExistsError
    REPLACE = "replace"  # store ``known`` whatever is there


@dataclass(frozen=True, slots=True)
class Change:
    """One write: what to do, what to add, what its writer knew, and who sent it."""

    mode: Mode
    #: What a merge adds; nothing, for a reset or a new session.
    counts: Counts
    active_at: datetime
    #: The session its writer last saw, stored in place of a corrupt one; None: the session
    #: must exist and be valid (the command line's reset), else the write raises. For an
    #: import or a replace: the session to store, as it is.
    known: Record | None
    #: Whether ``known`` was ever stored: a saved session that has since disappeared was
    #: deleted on purpose, and its identity must not come back.
    known_was_saved: bool
    #: How many distinct names of tools (prompts, clients) the session keeps apart.
    max_tools: int = DEFAULT_MAX_TOOLS
    #: Who wrote the change, and its number among theirs, counting from 1 (0: unnumbered).
    #: A backend whose reply can be lost applies each numbered change at most once however
    #: often it is sent; a writer sends its changes in order, each only once the one before
    #: it is known to be applied.
    writer: str = ""
    number: int = 0

    def apply(self, base: Record) -> Record:
        """The record to store, given the one found.

        ``base is self.known`` means the backend found no valid session (none, or a corrupt
        one it moved aside) and built on what ``base_when_missing`` or ``base_when_corrupt``
        gave it: the only case in which an import may store its session.
        """
        if self.mode is Mode.IMPORT or self.mode is Mode.REPLACE:
            known = self.known
            if known is None:
                raise ValueError(f"a {self.mode.value} change needs the session to store")
            if self.mode is Mode.IMPORT and base is not known:
                raise SessionExistsError(
                    f"a session ({shown(base.session.session_id)}) is already stored there; "
                    "nothing was changed"
                )
            return known
        session = base.session
        active_at = max(session.last_active_at, self.active_at)
        if self.mode is Mode.MERGE:
            return base.with_session(
                last_active_at=active_at, **add_counts(session, self.counts, self.max_tools)
            )
        if self.mode is Mode.RESET:
            nothing: Mapping[str, Any] = MappingProxyType({})
            return base.with_session(
                last_active_at=active_at,
                stats=SessionStats(),
                tools=nothing,
                prompts=nothing,
                clients=nothing,
            )
        assert self.mode is Mode.NEW
        return Record(Session.new(self.active_at), base.extra)

    def touched(self) -> Mapping[str, Collection[str]] | None:
        """For a merge: by section, the names whose entries ``apply`` may replace or add,
        those of the counts and OTHER (where names past the cap go). It leaves every other
        entry the very object it was, in its place, and adds names after the others. None
        for a change that may change any entry."""
        if self.mode is not Mode.MERGE:
            return None
        counts = self.counts
        return {
            "tools": {*counts.tools, OTHER},
            "prompts": {*counts.prompts, OTHER},
            "clients": {*counts.clients, OTHER},
        }

    def base_when_missing(self, where: str) -> Record:
        """What to build on where no session is stored (``where``: "session file at ...").

        A session this writer saw stored was deleted on purpose, so a new one starts; one it
        made but never stored is stored now. A change that knows none requires one.
        """
        known = self.known
        if known is None:
            raise SessionNotFoundError(f"no {where}")
        if self.known_was_saved:
            return Record(Session.new(self.active_at), known.extra)
        return known

    def base_when_corrupt(self) -> Record | None:
        """What to build on in place of a corrupt session (moved aside first), or None: the
        change knows no session, and the corruption is an error."""
        return self.known
