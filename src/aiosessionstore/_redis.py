"""The session in Redis: the file's exact bytes in one string key, and the counts of each
flush appended to a list beside it, folded in now and then; each writer's changes applied at
most once.

The backend is blocking, as every backend is: the store calls it on its own thread. It runs
redis-py's asyncio client on an event loop of its own, made in that thread, so the app's loop
never waits for Redis, a cancelled app task cannot cancel a write half way, and the flush at
interpreter exit (after the app's loop is gone) works the same.

Keys share the hash tag ``{<app>}``, so that they all live in one cluster slot:

- ``aiosessionstore:{<app>}:session``: the session as ``encode`` writes the file, as of the
  last fold;
- ``aiosessionstore:{<app>}:deltas``: merges not yet folded into it, oldest first;
- ``aiosessionstore:{<app>}:rev``: bumped by every rewrite of the session, delete and move of
  a corrupt key aside; never reset. Between two bumps the scripts only push to the list's
  tail;
- ``aiosessionstore:{<app>}:pushed``: how many deltas merges ever pushed; never reset. Less
  the list's length, it is the list's mark, which a push leaves as it is and any other change
  of the list's length moves, a change by hand too (a DEL of the list bumps no revision). So a
  compare-and-set that finds the revision and the mark it read finds the deltas it read,
  still first;
- ``aiosessionstore:{<app>}:epoch``: set to the new revision by everything that bumps it but a
  fold or a merge (a reset, a new session, an import, a delete, a corrupt key moved aside);
- ``aiosessionstore:{<app>}:applied:<writer>``: the number of that writer's last change
  applied, kept 7 days, so that a change sent again after a lost reply is applied once.

The session is ``:session`` with every delta folded over it in list order, by the merge rules
of ``Change.apply``.

A merge is one script that never conflicts: unless the writer's number says it was applied,
it pushes the delta, records the number and replies {status, revision, list length}, nothing
more. The store's view is then what it last read, folded, with its own changes since applied
(each once). The reply carries the session only where the writer must read it: its change was
applied before (a lost reply), the epoch or the value's length moved (reset, renewed,
replaced, deleted, set by hand), the value is one it has not judged and does not begin as
``encode`` writes version 1 (it is judged first, nothing pushed), the list has no room (the
merge is then a compare-and-set), or its push makes the list a multiple of ``COMPACT_EVERY``:
that writer folds. Its view is then exactly what it read.

Everything else is a compare-and-set on the revision and the list's mark, from the session
read just before, that writes the folded session and trims from the list's head exactly the
deltas it read: the fold, ``read``, a reset, a new session, an import, and a merge where no
session is stored yet. So each delta is folded exactly once. A corrupt session is moved
aside and rebuilt from the ``:session`` value last read (no delta folded in) plus the list,
if the epoch has not moved since; else from what the change builds on where none is stored.

A delta is a record the session codec reads back (``_delta``); a merge that cannot be said
so is written by compare-and-set. The scripts are in ``_redis_scripts``.

What a read takes from the list is bounded (``MAX_FILE_SIZE`` bytes as Redis counts them,
``MAX_FILE_SIZE / 128`` entries); a merge keeps it under half that. A ``:deltas`` of another
type, past the bound, or with an entry that is no delta, is renamed to
``:deltas:corrupt-<time>``; the entries that decode are pushed back, and those of a newer
release (none of an oversized one, which is not read), then those pushed since it was read.
"""

from __future__ import annotations

import asyncio
import codecs
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Coroutine, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, TypeAlias, TypeVar
from urllib.parse import SplitResult, parse_qs, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from . import _redis_scripts as scripts
from ._change import Change, Mode
from ._codec import decode, encode
from ._delta import Delta, fold, make_delta, read_delta
from ._errors import (
    CorruptSessionError,
    LockTimeoutError,
    SessionExistsError,
    SessionNotFoundError,
    SessionStoreError,
    UnsupportedVersionError,
)
from ._file import MAX_FILE_SIZE
from ._session import (
    Record,
)

__all__ = ("RedisBackend",)

logger = logging.getLogger("aiosessionstore")

_T = TypeVar("_T")
Client: TypeAlias = "aioredis.Redis | RedisCluster"

#: How long a writer's last change number is kept: far longer than any writer waits to send
#: a failed change again (it does so at its next flush, or when Redis is back).
APPLIED_TTL_MS = 7 * 24 * 3600 * 1000
#: Connect and reply timeouts of a client made from a URL that sets none.
DEFAULT_SOCKET_TIMEOUT = 5.0
#: The writer whose push makes the list of deltas a multiple of this long folds it.
COMPACT_EVERY = 32
_SCHEMES = ("redis", "rediss")
#: A revision no revision is: "I hold none".
_NO_REV = "-"


@dataclass(frozen=True)
class _View:
    """The stored session as of a revision: ``:session`` (its record, None if there is none
    or it is corrupt; the SHA-1 of its bytes, which a compare-and-set expects to find; why it
    is corrupt, if it is), the deltas read after it, and it with them folded in."""

    rev: str
    base: Record | None
    digest: str
    #: Its length (-1: none; -2: a key of another type): a merge that finds another, at the
    #: same revision (a value set by hand), reads the session again.
    size: int
    corrupt: str | None
    deltas: tuple[Delta, ...]
    folded: Record | None
    #: The epoch at that revision: a merge that finds another reads the session again.
    epoch: str
    #: The list's mark (``:pushed`` less the list's length) with ``deltas`` read: where it
    #: is another at the same revision, the list was changed by hand, and is read whole.
    mark: int


@dataclass(frozen=True)
class _BadDeltas:
    """A ``:deltas`` that cannot be read, at a revision: why, for the messages; ``large``:
    past the bound, so not even its sound entries are read."""

    rev: str
    why: str
    large: bool = False


_Found: TypeAlias = "_View | _BadDeltas"


class RedisBackend:
    """A session in Redis, shared by every process that names the same server and app.

    ``client``: a ``redis.asyncio.Redis`` or ``RedisCluster`` (Sentinel-managed, TLS, as you
    configure it) that this backend alone uses: the store drives it from its own thread and
    event loop, and closes it when it closes. Give each store a client of its own.
    ``timeout`` bounds each call, retries of a compare-and-set included.
    """

    def __init__(self, client: Client, *, app_name: str = "octocode", timeout: float = 10.0):
        _check_app_name(app_name)
        encoder = client.get_encoder()
        if encoder.decode_responses:
            raise ValueError(
                "the session is kept as bytes: give RedisBackend a client without "
                "decode_responses (and no decode_responses option in the URL)"
            )
        if _codec_name(encoder.encoding) != "utf-8":  # the scripts and keys are sent through it
            raise ValueError(
                f"the session is kept as UTF-8: give RedisBackend a client whose encoding is "
                f"utf-8, the default (and no encoding option in the URL), not {encoder.encoding!r}"
            )
        self.client = client
        self.app_name = app_name
        self.timeout = timeout
        base = f"aiosessionstore:{{{app_name}}}"
        self._session_key = f"{base}:session"
        self._rev_key = f"{base}:rev"
        self._deltas_key = f"{base}:deltas"
        self._epoch_key = f"{base}:epoch"
        self._pushed_key = f"{base}:pushed"
        self._applied_prefix = f"{base}:applied:"
        self._where = _describe(client)
        self.description = f"{self._where} key {base}"
        #: What a change that needs a session stored says where there is none, as ``read``
        #: and ``peek`` do: "no session in ...".
        self._missing = f"session in {self.description}"
        self._merge_script: AsyncScript = client.register_script(scripts.MERGE)
        self._rewrite_script: AsyncScript = client.register_script(scripts.REWRITE)
        self._read_script: AsyncScript = client.register_script(scripts.READ)
        self._aside_script: AsyncScript = client.register_script(scripts.SET_ASIDE)
        self._deltas_aside_script: AsyncScript = client.register_script(scripts.DELTAS_ASIDE)
        self._remove_script: AsyncScript = client.register_script(scripts.REMOVE)
        self._loop: asyncio.AbstractEventLoop | None = None
        #: What this backend last read or wrote (exactly as stored then): a later read that
        #: holds it is sent only what is new since.
        self._held: _View | None = None
        #: The session as this store sees it: ``_held`` folded, with this store's merges
        #: pushed since applied (each once). None where ``_held`` has no session.
        self._own: Record | None = None
        #: The last view of a sound value: what a corrupt one is rebuilt from.
        self._sound_view: _View | None = None
        #: The deltas this backend pushed since it last read, by their bytes: not decoded
        #: again when read back. Bounded: it is only a saving.
        self._pushed: dict[bytes, Delta] = {}
        #: By writer: the number of its last change this backend sent (whose reply may have
        #: been lost), and as it was before this commit: Redis saying that a change never
        #: sent was applied means a value set by hand, which must not drop its counts.
        self._sent: dict[str, int] = {}
        self._sent_before = 0

    @property
    def _view(self) -> _View | None:
        return self._held

    @_view.setter
    def _view(self, view: _View | None) -> None:
        """What was just read or written: the store's own view starts again from it."""
        self._held = view
        self._own = None if view is None or view.corrupt is not None else view.folded
        if view is not None and view.base is not None:
            self._sound_view = view

    @classmethod
    def from_url(
        cls, url: str, *, app_name: str = "octocode", timeout: float = 10.0
    ) -> RedisBackend:
        """``redis://[[user]:password@]host[:port][/db]``, or ``rediss://`` for TLS (with
        ``?ssl_ca_certs=/path/ca.pem`` for a CA of your own).

        Connect and reply timeouts are 5 s unless the URL sets ``socket_connect_timeout`` or
        ``socket_timeout``; redis-py does not retry on its own (the store's writer does, at
        its next flush), so an unreachable server fails within about the connect timeout.
        """
        parts = urlsplit(url)
        scheme = parts.scheme
        if scheme not in _SCHEMES:
            raise ValueError(
                f"a session URL must start with redis:// or rediss://, not {scheme}://"
                if scheme
                else "a session URL must start with redis:// or rediss://"
            )
        _check_userinfo(parts)
        if not parts.hostname:  # redis-py would take localhost: an empty ${HOST}, say
            raise ValueError("a session URL must name its host, as in redis://127.0.0.1:6379/0")
        if not re.fullmatch(r"/?[0-9]*", parts.path):  # redis-py would take /abc as /0
            raise ValueError("a session URL's path must be a database number, as in /0")
        query = parse_qs(parts.query)
        in_path, in_query = parts.path.lstrip("/"), query.get("db", [])
        if in_path and any(  # redis-py would take the query's
            not re.fullmatch("[0-9]+", db) or int(db) != int(in_path) for db in in_query
        ):
            raise ValueError(
                f"the session URL names database {in_path} in its path and "
                f"{', '.join(in_query)} in its query: give one"
            )
        options: dict[str, Any] = {"retry": Retry(NoBackoff(), 0)}
        for name in ("socket_connect_timeout", "socket_timeout"):
            if name not in query:
                options[name] = DEFAULT_SOCKET_TIMEOUT
        client = aioredis.Redis.from_url(url, **options)
        pool = client.connection_pool
        try:  # redis-py passes an unknown option on, to fail at the first command: fail now
            pool.connection_class(**pool.connection_kwargs)  # no I/O: it connects when used
        except TypeError as exc:
            raise ValueError(
                f"the session URL has an option redis-py does not take ({exc})"
            ) from None
        except RedisError as exc:  # a value it does not take (protocol=9, ssl_cert_reqs=x)
            raise ValueError(
                f"the session URL has an option value redis-py refuses ({exc})"
            ) from None
        return cls(client, app_name=app_name, timeout=timeout)

    def __repr__(self) -> str:
        return f"RedisBackend({self.description!r})"

    # -- the Backend protocol: blocking, on the store's thread ----------------------------

    def open(self, change: Change) -> Record:
        return self.commit(change)

    def commit(self, change: Change) -> Record:
        """A merge returns this store's view: the session as it last read it (folded), with
        its own merges since applied; the others' counts come in when it folds or reads."""
        before = self._held, self._own, self._sound_view
        self._sent_before = self._sent.get(change.writer, 0)
        self._sent[change.writer] = max(change.number, self._sent_before)
        try:
            return self._run(self._commit(change))
        except SessionExistsError:
            # An import refused changes nothing: what it read is not ours to fold at close.
            self._held, self._own, self._sound_view = before
            raise

    def read(self) -> Record:
        """The session, folded: the deltas are folded into the stored value on the way."""
        return self._run(self._read())

    def peek(self) -> Record:
        """The session, folded here; nothing is written or moved."""
        return self._run(self._peek())

    def remove(self) -> bool:
        return self._run(self._remove())

    def close(self) -> None:
        """Fold the deltas, if we pushed any since we last folded, so that a fleet at rest
        leaves the whole session in ``:session`` (a favour: any failure is only logged);
        then close the client and our loop. A later call (the exit flush) makes a new loop."""
        loop = self._loop
        if loop is None:
            return
        _refuse_a_running_loop(None)
        self._loop = None
        if self._pushed or (self._view is not None and self._view.deltas):
            try:
                loop.run_until_complete(asyncio.wait_for(self._fold_at_close(), self.timeout))
            except (RedisError, OSError, asyncio.TimeoutError, SessionStoreError) as exc:
                logger.debug("folding the deltas of %s failed: %s", self.description, exc)
        try:
            loop.run_until_complete(asyncio.wait_for(self.client.aclose(), self.timeout))
            loop.run_until_complete(loop.shutdown_asyncgens())
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            raise SessionStoreError(f"cannot close {self.description}: {_reason(exc)}") from exc
        finally:
            loop.close()

    # -- the work, on our own loop ---------------------------------------------------------

    def _run(self, work: Coroutine[Any, Any, _T]) -> _T:
        """Run ``work`` to its end on our loop, within ``timeout``, with errors translated."""
        _refuse_a_running_loop(work)
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        try:
            return self._loop.run_until_complete(asyncio.wait_for(work, self.timeout))
        except asyncio.TimeoutError:
            raise SessionStoreError(
                f"no answer from {self.description} within {self.timeout} s"
            ) from None
        except (RedisError, OSError) as exc:
            raise SessionStoreError(f"cannot use {self.description}: {_reason(exc)}") from exc

    async def _commit(self, change: Change) -> Record:
        """A merge pushes its delta: one round trip, never a conflict. Anything else, and a
        merge where no session is stored yet, is a compare-and-set of the folded session."""
        deadline = time.monotonic() + self.timeout
        made = make_delta(change, self._missing) if change.mode is Mode.MERGE else None
        view = self._view
        if view is None or made is None or view.corrupt is not None or self._own is None:
            # Written by compare-and-set: from the session as it is now, our own deltas
            # (pushed since we read) and those of others folded in, so that it comes after
            # them all.
            view = await self._sound(await self._load(view), change)
            self._view = view
        while made is None or view.corrupt is not None or self._own is None:
            done = await self._rewrite(view, change, deadline, merge_instead=made is not None)
            if isinstance(done, Record):
                return done
            view = done  # a session appeared meanwhile: push the delta instead
        assert made is not None
        return await self._merge(change, made, deadline)

    async def _merge(self, change: Change, made: tuple[bytes, Delta], deadline: float) -> Record:
        """Push the delta. Our view is then what we held with this change applied; the
        reply carries the session only where we must read it (see ``scripts.MERGE``), and then we
        hold what it says, in which our delta counts once."""
        data, delta = made
        while True:
            view = self._view
            assert view is not None
            reply = await self._call(
                self._merge_script,
                self._keys(self._applied_prefix + change.writer),
                [
                    change.number,
                    data,
                    APPLIED_TTL_MS,
                    view.rev,
                    view.size,
                    view.epoch,
                    len(view.deltas),
                    MAX_FILE_SIZE,
                    COMPACT_EVERY,
                    view.mark,
                ],
            )
            status = _text(reply[0])
            if status == "deltas":
                found: _Found = _bad_deltas(reply)
            elif status in ("check", "full"):  # a value we have not judged; no room
                found = self._absorb(None, reply[3])
            else:
                break
            view = await self._sound(found, change)
            self._view = view
            if status == "full" and view.corrupt is None and self._own is not None:
                done = await self._rewrite(view, change, deadline)
                assert isinstance(done, Record)
                return done
            if view.corrupt is not None or self._own is None:
                done = await self._rewrite(view, change, deadline, merge_instead=True)
                if isinstance(done, Record):
                    return done
        if status == "applied":
            self._check_sent(change)
        if status == "ok":
            if len(self._pushed) >= 2 * COMPACT_EVERY:
                del self._pushed[next(iter(self._pushed))]
            self._pushed[data] = delta
        if not reply[3]:  # pushed, and nothing to read: ours is the only change we see
            own = self._own
            assert own is not None
            self._own = change.apply(own)
            return self._own
        view = await self._sound(self._absorb(view, reply[3]), change)
        if view.corrupt is not None:  # moved aside, replaced by a fold that counts ours once
            done = await self._rewrite(view, change, deadline, include=False)
            # else deleted meanwhile, with our delta: our change came before the delete
            return done if isinstance(done, Record) else self._applied(done, change)
        self._view = view  # read after our push (or our change's): it counts it once
        if status == "applied" or view.folded is None:
            return self._applied(view, change)
        pushed = view.folded
        if int(reply[2]) % COMPACT_EVERY == 0:
            try:  # our delta is stored: folding it in is a favour, not part of the flush
                await self._rewrite(view, None, deadline, give_up=True)
            except (RedisError, OSError, SessionStoreError) as exc:
                logger.debug("folding the deltas of %s failed: %s", self.description, exc)
        # None if the fold lost to a delete, which came after our push: what the push left
        return pushed if self._own is None else self._own

    async def _rewrite(
        self,
        view: _View,
        change: Change | None,
        deadline: float,
        *,
        include: bool = True,
        give_up: bool = False,
        merge_instead: bool = False,
    ) -> Record | _View:
        """Compare-and-set of the folded session, with ``change`` applied (unless ``include``
        is false: a merge whose delta is in the list already), a corrupt value moved aside
        and replaced by what ``_replacement`` says. Retried until it lands, unless
        ``give_up`` (then the view it lost to); ``merge_instead``: a view with a session
        stored is returned for the merge to push its delta."""
        stem = f"{self._session_key}:corrupt-{_now()}"
        aside, number = stem, 0
        while True:
            if view.corrupt is not None:
                assert change is not None
                record = fold(self._replacement(view, change), view.deltas)
            else:
                record = view.folded
            numbered = change is not None and include
            if numbered:
                assert change is not None
                if record is None:
                    record = change.base_when_missing(self._missing)
                record = change.apply(record)
            elif record is None or (not view.deltas and view.corrupt is None):
                return view if record is None else record  # nothing to fold
            data = encode(record)
            if len(data) > MAX_FILE_SIZE:
                raise SessionStoreError(
                    f"cannot write {self.description}: the session would be {len(data)} "
                    f"bytes, over the {MAX_FILE_SIZE}-byte limit"
                )
            writer = change.writer if numbered and change is not None else ""
            identity = view.corrupt is not None or (
                numbered and change is not None and change.mode is not Mode.MERGE
            )
            reply = await self._call(
                self._rewrite_script,
                [*self._keys(self._applied_prefix + writer), aside],
                [
                    view.rev,
                    len(view.deltas),
                    data,
                    view.digest,
                    change.number if numbered and change is not None else 0,
                    APPLIED_TTL_MS,
                    MAX_FILE_SIZE,
                    "1" if view.corrupt is not None else "0",
                    "1" if identity else "0",
                    view.mark,
                ],
            )
            status = _text(reply[0])
            if status == "ok":
                if view.corrupt is not None:
                    logger.warning(
                        "%s was corrupt (%s); moved it to %s and wrote a valid one in its place",
                        self.description,
                        view.corrupt,
                        aside,
                    )
                self._view = _View(
                    _text(reply[1]), record, _sha1(data), len(data), None, (), record,
                    _text(reply[2]), int(reply[3]),
                )  # fmt: skip
                self._pushed.clear()
                return record
            if status == "taken":
                number += 1
                aside = f"{stem}-{number}"
                continue
            if status == "deltas":
                found: _Found = _bad_deltas(reply)
            else:
                found = self._absorb(None, reply[1])
            view = await self._sound(found, change)
            self._view = view
            if status == "applied":
                assert change is not None
                self._check_sent(change)
                return self._applied(view, change)
            if give_up:
                return view
            if merge_instead and view.corrupt is None and self._own is not None:
                return view
            if time.monotonic() >= deadline:
                raise LockTimeoutError(
                    f"{self.description} changed under every write for {self.timeout} s"
                )

    async def _fold_at_close(self) -> None:
        """A few tries: another store folding at the same time is no reason to wait. A list
        or a session that is not sound is left as it is."""
        deadline = time.monotonic() + self.timeout
        for _ in range(3):
            found = await self._load(self._view)
            if isinstance(found, _BadDeltas) or found.corrupt is not None:
                return
            self._view = found
            if isinstance(await self._rewrite(found, None, deadline, give_up=True), Record):
                return

    def _replacement(self, view: _View, change: Change) -> Record:
        """What to fold the deltas over in place of a corrupt value.

        The value last read from ``:session`` (no delta folded in), if no reset, new
        session, import or delete came since: every delta still in the list was pushed
        after it was folded, so none counts twice (those folded into it since by others
        are lost with the corrupt value; they are in the key it is moved to). Else what the
        change builds on where none is stored: never a count that may be in the list too,
        nor an identity that may have been deleted.
        """
        sound = self._sound_view
        if sound is not None and sound.base is not None and sound.epoch == view.epoch:
            return sound.base
        known = change.base_when_corrupt()
        assert known is not None  # else _sound raised
        if change.mode is Mode.IMPORT or change.mode is Mode.REPLACE:
            return known
        return change.base_when_missing(self._missing)

    def _check_sent(self, change: Change) -> None:
        """Refuse Redis's word that a change this backend never sent was applied (a change
        number set by hand, or a writer id shared): it would drop the change's counts."""
        if change.number > self._sent_before:
            self._sent[change.writer] = self._sent_before  # sent again, it is still unsent
            raise SessionStoreError(
                f"{self.description} says change {change.number} of writer {change.writer} "
                "was applied, but it was never sent (a change number set by hand?); its "
                f"counts stay pending until {self._applied_prefix}{change.writer} is deleted "
                "or expires"
            )

    def _applied(self, view: _View, change: Change) -> Record:
        """A change sent again after its reply was lost: adopt what is stored now."""
        if view.folded is not None and view.corrupt is None:
            return view.folded
        # Applied, then deleted or spoiled since: the session it went into is gone.
        if change.known is None:
            raise SessionNotFoundError(f"no session in {self.description}")
        return change.apply(change.known)

    async def _sound(self, found: _Found, change: Change | None) -> _View:
        """A view whose deltas all decode, a corrupt list moved aside first (its sound
        entries pushed back); a corrupt session is moved aside here only where ``change``
        has nothing to put in its place (and that raises), else by the rewrite."""
        while True:
            if isinstance(found, _BadDeltas):
                await self._set_deltas_aside(found)
                found = await self._load(None)
                continue
            if found.corrupt is None:
                return found
            if change is not None and change.base_when_corrupt() is not None:
                return found
            moved = await self._set_aside(found)
            if moved is None:
                found = await self._load(None)  # it changed meanwhile: judge it afresh
                continue
            raise CorruptSessionError(
                f"{self.description} was corrupt ({found.corrupt}); it was moved to {moved}"
            )

    async def _read(self) -> Record:
        deadline = time.monotonic() + self.timeout
        view = await self._sound(await self._load(self._view), None)
        self._view = view
        if view.folded is None:
            raise SessionNotFoundError(f"no session in {self.description}")
        done = await self._rewrite(view, None, deadline)
        if not isinstance(done, Record):  # deleted meanwhile
            raise SessionNotFoundError(f"no session in {self.description}")
        return done

    async def _peek(self) -> Record:
        found = await self._load(None)
        if isinstance(found, _BadDeltas):
            raise CorruptSessionError(
                f"{self.description} holds a corrupt list of changes ({found.why}); "
                "it was left in place"
            )
        if found.corrupt is not None:
            raise CorruptSessionError(
                f"{self.description} is corrupt ({found.corrupt}); it was left in place"
            )
        if found.folded is None:
            raise SessionNotFoundError(f"no session in {self.description}")
        return found.folded

    async def _remove(self) -> bool:
        """Delete the keys; as the file's, a session of a newer version is left alone, and a
        corrupt value is moved aside, not deleted."""
        found = await self._load(None)  # raises UnsupportedVersionError for a newer one
        aside = None
        if isinstance(found, _View) and found.corrupt is not None:
            aside = await self._set_aside(found)
            if aside is not None:
                logger.warning(
                    "%s was corrupt (%s); moved it to %s instead of deleting it",
                    self.description,
                    found.corrupt,
                    aside,
                )
        existed, rev, mark = await self._call(self._remove_script, self._keys())
        self._view = _View(_text(rev), None, "", -1, None, (), None, _text(rev), int(mark))
        self._pushed.clear()
        return bool(existed) or aside is not None

    async def _load(self, held: _View | None) -> _Found:
        """What is stored; only what is new since ``held``, if it is still current."""
        reply = await self._call(
            self._read_script,
            self._keys(),
            [
                MAX_FILE_SIZE,
                _NO_REV if held is None else held.rev,
                0 if held is None else len(held.deltas),
                0 if held is None else held.size,
                0 if held is None else held.mark,
            ],
        )
        if _text(reply[0]) == "deltas":
            return _bad_deltas(reply)
        return self._absorb(held, reply[1])

    def _absorb(self, held: _View | None, seen: Sequence[Any]) -> _Found:
        """A script's view, on top of ``held`` where it sent only what is new; the deltas we
        pushed are not decoded again."""
        rev, kind, epoch, mark = _text(seen[0]), _text(seen[2]), _text(seen[5]), int(seen[6])
        if kind == "same":
            assert held is not None
            assert held.rev == rev
            assert held.mark == mark
            assert len(held.deltas) == int(seen[1])
            view = held
        else:
            view = self._judge(rev, kind, seen[3], epoch, mark)
        deltas, folded = list(view.deltas), view.folded
        pushed = self._pushed
        for index, entry in enumerate(seen[4]):
            entry = entry if isinstance(entry, bytes) else str(entry).encode()
            delta = pushed.get(entry)
            if delta is None:
                at = f"entry {len(view.deltas) + index}"
                if len(entry) > MAX_FILE_SIZE:
                    return _BadDeltas(rev, f"{at}: {len(entry)} bytes, over {MAX_FILE_SIZE}")
                try:
                    delta = read_delta(entry)
                except CorruptSessionError as exc:
                    return _BadDeltas(rev, f"{at}: {exc}")
                except RecursionError:
                    return _BadDeltas(rev, f"{at}: nested too deeply")
                except UnsupportedVersionError as exc:
                    raise UnsupportedVersionError(
                        f"{self.description}: a change in its list: {exc}; it is left as it is"
                    ) from None
            deltas.append(delta)
            if view.corrupt is None:
                folded = delta.onto(folded)
        pushed.clear()  # read back: the list is what we hold now
        return replace(view, deltas=tuple(deltas), folded=folded, epoch=epoch, mark=mark)

    def _judge(self, rev: str, kind: str, value: Any, epoch: str, mark: int) -> _View:
        """What a script found in ``:session``: a session, none, or a corrupt value (a newer
        one raises)."""
        if kind == "missing":
            return _View(rev, None, "", -1, None, (), None, epoch, mark)
        if kind == "type":
            name = _text(value)
            why = f"a Redis {name}, not a string"
            return _View(rev, None, name, -2, why, (), None, epoch, mark)
        if kind == "large":
            why = f"{value} bytes, larger than {MAX_FILE_SIZE}"
            return _View(rev, None, "", int(value), why, (), None, epoch, mark)
        data = value if isinstance(value, bytes) else str(value).encode()
        digest = _sha1(data)
        try:
            record = decode(data)
        except UnsupportedVersionError as exc:
            raise UnsupportedVersionError(
                f"{self.description}: {exc}; it is left as it is"
            ) from None
        except CorruptSessionError as exc:
            return _View(rev, None, digest, len(data), str(exc), (), None, epoch, mark)
        except RecursionError:
            why = "nested too deeply to parse"
            return _View(rev, None, digest, len(data), why, (), None, epoch, mark)
        return _View(rev, record, digest, len(data), None, (), record, epoch, mark)

    async def _set_aside(self, found: _View) -> str | None:
        """Rename the corrupt value to a key of its own, if it is still what we judged; that
        key, or None if it changed meanwhile."""
        stem = f"{self._session_key}:corrupt-{_now()}"
        aside, number = stem, 0
        while True:
            reply = await self._call(self._aside_script, [*self._keys(), aside], [found.rev])
            self._view = None
            if reply[0] == 1:
                return aside
            if reply[0] == 0:
                return None
            number += 1
            aside = f"{stem}-{number}"

    async def _set_deltas_aside(self, found: _BadDeltas) -> None:
        """Rename a corrupt list of deltas, as it was, to a key of its own, and push its
        sound entries back in order, if nothing changed since it was judged; a list past
        the bound is moved whole, unread."""
        sound: list[bytes] = []
        rev, read = found.rev, ["-", 0]
        if not found.large:
            reply = await self._call(
                self._read_script, self._keys(), [MAX_FILE_SIZE, _NO_REV, 0, 0, 0]
            )
            if _text(reply[0]) == "ok":  # a list, with an entry that does not decode
                rev = _text(reply[1][0])
                read = [int(reply[1][6]), len(reply[1][4])]
                for entry in reply[1][4]:
                    if len(entry) > MAX_FILE_SIZE:
                        continue
                    try:
                        read_delta(entry)
                    except UnsupportedVersionError:
                        pass  # a newer release's: not ours to judge, put back as it is
                    except (CorruptSessionError, RecursionError):
                        continue
                    sound.append(entry)
            elif _text(reply[1]) != rev:
                return  # it changed meanwhile: judged afresh by the caller
        stem = f"{self._deltas_key}:corrupt-{_now()}"
        aside, number = stem, 0
        while True:
            moved = await self._call(
                self._deltas_aside_script, [*self._keys(), aside], [rev, *read, *sound]
            )
            self._view = None
            self._pushed.clear()
            if moved[0] == 0:
                return
            if moved[0] == 1:
                since = int(moved[2])
                logger.warning(
                    "%s held a corrupt list of changes (%s); moved it to %s as it was, "
                    "and put back the %d that were sound%s",
                    self.description,
                    found.why,
                    aside,
                    len(sound),
                    f", and the {since} pushed since it was read" if since else "",
                )
                return
            number += 1
            aside = f"{stem}-{number}"

    def _keys(self, *more: str) -> list[str]:
        return [
            self._session_key, self._rev_key, self._deltas_key, self._epoch_key,
            self._pushed_key, *more,
        ]  # fmt: skip

    async def _call(
        self, script: AsyncScript, keys: list[str], args: list[Any] | None = None
    ) -> Any:
        """EVALSHA, or EVAL once Redis forgot the script (a restart, SCRIPT FLUSH)."""
        reply: Awaitable[Any] = script(keys=keys, args=args or [])
        return await reply


def _bad_deltas(reply: Sequence[Any]) -> _BadDeltas:
    """What a script's {'deltas', rev, kind, detail} reply says."""
    rev, kind = _text(reply[1]), _text(reply[2])
    if kind == "large":
        why = (
            f"{_text(reply[3])} bytes in {_text(reply[4])} entries, larger than "
            f"{MAX_FILE_SIZE} bytes or {MAX_FILE_SIZE // 128} entries"
        )
        return _BadDeltas(rev, why, True)
    return _BadDeltas(rev, _wrong_type(reply[3]))


def _now() -> str:
    now = datetime.now(timezone.utc)
    return f"{now:%Y%m%dT%H%M%S}.{now.microsecond // 1000:03d}Z"


def _wrong_type(kind: Any) -> str:
    return f"a Redis {_text(kind)}, not a list"


def _refuse_a_running_loop(work: Coroutine[Any, Any, Any] | None) -> None:
    """The methods block: on an event loop's thread they would stall it, and cannot run."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    if work is not None:
        work.close()
    raise RuntimeError(
        "RedisBackend's methods block: call them from a thread with no running event loop "
        "(the store runs them on its own thread)"
    )


def _codec_name(encoding: str) -> str | None:
    """The canonical name of a codec, or None for one Python does not know."""
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        return None


def _check_app_name(app_name: str) -> None:
    if not isinstance(app_name, str):
        raise TypeError(f"app_name must be a str, not {type(app_name).__name__}")
    if not app_name or "{" in app_name or "}" in app_name:
        raise ValueError(
            f"app_name must be a non-empty name without braces (the keys' cluster hash tag), "
            f"not {app_name!r}"
        )


def _check_userinfo(parts: SplitResult) -> None:
    """Refuse an ``@`` after the host when none is before it: a password with a ``/``, ``?`` or
    ``#`` not percent-encoded, which ends the host early and would put pieces of the password
    in the host, port or database that messages show."""
    if "@" not in parts.netloc and "@" in f"{parts.path}?{parts.query}#{parts.fragment}":
        raise ValueError(
            "a session URL has an @ after its host: percent-encode a /, ?, # or @ in the "
            "password (%2F, %3F, %23, %40), or in an option"
        )


def _describe(client: Client) -> str:
    """Where the client connects, for messages: never its password."""
    if isinstance(client, RedisCluster):
        nodes = client.get_nodes() or list(getattr(client, "startup_nodes", []))
        first = f"{nodes[0].host}:{nodes[0].port}" if nodes else "?"
        return f"redis-cluster://{first}"
    pool = client.connection_pool
    options = pool.connection_kwargs
    if "path" in options:
        return f"unix://{options['path']}?db={options.get('db', 0)}"
    scheme = "rediss" if issubclass(pool.connection_class, SSLConnection) else "redis"
    host = options.get("host", type(pool).__name__)
    return f"{scheme}://{host}:{options.get('port', 6379)}/{options.get('db', 0)}"


def _reason(exc: BaseException) -> str:
    """An error's message, named; redis-py's messages carry no password."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()
