"""The session in Redis: one string key holding the file's exact bytes, written by
compare-and-set, with each writer's changes applied at most once.

The backend is blocking, as every backend is: the store calls it on its own thread. It runs
redis-py's asyncio client on an event loop of its own, made in that thread, so the app's loop
never waits for Redis, a cancelled app task cannot cancel a write half way, and the flush at
interpreter exit (after the app's loop is gone) works the same.

Keys share the hash tag ``{<app>}``, so that they all live in one cluster slot:

- ``aiosessionstore:{<app>}:session``: the session, as ``encode`` writes the file;
- ``aiosessionstore:{<app>}:rev``: bumped by every write and delete, never reset, so a
  compare-and-set that finds the revision it expects finds the value it read (no ABA);
- ``aiosessionstore:{<app>}:applied:<writer>``: the number of that writer's last change
  applied, kept 7 days, so that a change sent again after a lost reply is applied once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Coroutine, Sequence
from dataclasses import dataclass
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

from ._change import Change
from ._codec import decode, encode
from ._errors import (
    CorruptSessionError,
    LockTimeoutError,
    SessionNotFoundError,
    SessionStoreError,
    UnsupportedVersionError,
)
from ._file import MAX_FILE_SIZE
from ._session import Record

__all__ = ("RedisBackend",)

logger = logging.getLogger("aiosessionstore")

_T = TypeVar("_T")
Client: TypeAlias = "aioredis.Redis | RedisCluster"

#: How long a writer's last change number is kept: far longer than any writer waits to send
#: a failed change again (it does so at its next flush, or when Redis is back).
APPLIED_TTL_MS = 7 * 24 * 3600 * 1000
#: Connect and reply timeouts of a client made from a URL that sets none.
DEFAULT_SOCKET_TIMEOUT = 5.0
_SCHEMES = ("redis", "rediss")

# Every script checks all it can before its first write: Redis does not roll a script back.
_LUA_PRELUDE = """
local function rev_of()
  local kind = redis.call('TYPE', KEYS[2])['ok']
  if kind == 'none' then return '' end
  if kind ~= 'string' then return nil, KEYS[2] .. ' is a ' .. kind .. ', not a revision' end
  local rev = redis.call('GET', KEYS[2])
  -- What INCR takes: no sign, no leading zero, below 2^63 (18 digits are far enough).
  if not (rev == '0' or string.match(rev, '^[1-9][0-9]*$')) or #rev > 18 then
    return nil, KEYS[2] .. ' holds no revision'
  end
  return rev
end
local function state(rev, max)
  local kind = redis.call('TYPE', KEYS[1])['ok']
  if kind == 'none' then return {rev, 'missing'} end
  if kind ~= 'string' then return {rev, 'type', kind} end
  local size = redis.call('STRLEN', KEYS[1])
  if size > max then return {rev, 'large', size} end
  return {rev, 'value', redis.call('GET', KEYS[1])}
end
local function bump()
  if redis.call('EXISTS', KEYS[2]) == 1 then
    redis.call('INCR', KEYS[2])
  else
    -- A revision lost (a flushed database) restarts from the server's clock in
    -- microseconds, far above any count of writes: a stale writer's revision never matches.
    local now = redis.call('TIME')
    redis.call('SET', KEYS[2], now[1] .. string.rep('0', 6 - #now[2]) .. now[2])
  end
  return redis.call('GET', KEYS[2])
end
local function reply(status, rev, max)
  local found = state(rev, max)
  table.insert(found, 1, status)
  return found
end
"""

#: KEYS: session, rev, applied. ARGV: number, expected rev, expected SHA-1 of the value ("" for
#: none), new value, TTL of applied (ms), largest value returned.
_COMMIT = (
    _LUA_PRELUDE
    + """
local rev, err = rev_of()
if not rev then return redis.error_reply(err) end
local max = tonumber(ARGV[6])
local number = tonumber(ARGV[1])
if number > 0 then
  local kind = redis.call('TYPE', KEYS[3])['ok']
  if kind ~= 'none' then
    local done = kind == 'string' and redis.call('GET', KEYS[3])
    -- Plain digits only: tonumber would take '1e999' as infinity, and skip every change.
    if not done or not string.match(done, '^[0-9]+$') or #done > 15 then
      return redis.error_reply(KEYS[3] .. ' holds no change number')
    end
    if number <= tonumber(done) then return reply('applied', rev, max) end
  end
end
if rev ~= ARGV[2] then return reply('conflict', rev, max) end
-- The revision matches; the value must too, should anything have set it by hand.
local kind = redis.call('TYPE', KEYS[1])['ok']
local digest = ''
if kind == 'string' then
  -- A value set by hand past the bound is not read whole: the reply says it is too large.
  if redis.call('STRLEN', KEYS[1]) > max then return reply('conflict', rev, max) end
  digest = redis.sha1hex(redis.call('GET', KEYS[1]))
elseif kind ~= 'none' then
  digest = kind
end
if digest ~= ARGV[3] then return reply('conflict', rev, max) end
redis.call('SET', KEYS[1], ARGV[4])
local new = bump()
if number > 0 then redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[5]) end
return {'ok', new}
"""
)

#: KEYS: session, rev. ARGV: largest value returned.
_READ = (
    _LUA_PRELUDE
    + """
local rev, err = rev_of()
if not rev then return redis.error_reply(err) end
return state(rev, tonumber(ARGV[1]))
"""
)

#: KEYS: session, rev, aside. ARGV: the revision at which the value was judged corrupt.
#: Returns {1, new rev} once moved; {0} if anything changed since; {-1} if aside is taken.
_SET_ASIDE = (
    _LUA_PRELUDE
    + """
local rev, err = rev_of()
if not rev then return redis.error_reply(err) end
if rev ~= ARGV[1] or redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
if redis.call('EXISTS', KEYS[3]) == 1 then return {-1} end
redis.call('RENAME', KEYS[1], KEYS[3])
return {1, bump()}
"""
)

#: KEYS: session, rev. Returns {1 if it existed else 0, new rev}.
_REMOVE = (
    _LUA_PRELUDE
    + """
local rev, err = rev_of()
if not rev then return redis.error_reply(err) end
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'none' and kind ~= 'string' then
  return redis.error_reply(KEYS[1] .. ' is a ' .. kind .. ', not a session; left as it is')
end
local existed = redis.call('DEL', KEYS[1])
return {existed, bump()}
"""
)


@dataclass(frozen=True)
class _Seen:
    """The stored session at a revision: its record (None: there is none) and the SHA-1 of
    its bytes, which a compare-and-set expects to find."""

    rev: str
    record: Record | None
    digest: str


@dataclass(frozen=True)
class _Corrupt:
    """A stored value that is no session, at a revision: why, for the messages."""

    rev: str
    why: str


_Found: TypeAlias = "_Seen | _Corrupt"


class RedisBackend:
    """A session in Redis, shared by every process that names the same server and app.

    ``client``: a ``redis.asyncio.Redis`` or ``RedisCluster`` (Sentinel-managed, TLS, as you
    configure it) that this backend alone uses: the store drives it from its own thread and
    event loop, and closes it when it closes. Give each store a client of its own.
    ``timeout`` bounds each call, retries of a compare-and-set included.
    """

    def __init__(self, client: Client, *, app_name: str = "octocode", timeout: float = 10.0):
        _check_app_name(app_name)
        if client.get_encoder().decode_responses:
            raise ValueError(
                "the session is kept as bytes: give RedisBackend a client without "
                "decode_responses (and no decode_responses option in the URL)"
            )
        self.client = client
        self.app_name = app_name
        self.timeout = timeout
        base = f"aiosessionstore:{{{app_name}}}"
        self._session_key = f"{base}:session"
        self._rev_key = f"{base}:rev"
        self._applied_prefix = f"{base}:applied:"
        self._where = _describe(client)
        self.description = f"{self._where} key {base}"
        self._commit_script: AsyncScript = client.register_script(_COMMIT)
        self._read_script: AsyncScript = client.register_script(_READ)
        self._aside_script: AsyncScript = client.register_script(_SET_ASIDE)
        self._remove_script: AsyncScript = client.register_script(_REMOVE)
        self._loop: asyncio.AbstractEventLoop | None = None
        #: What this backend last read or wrote: a write expecting it is one round trip.
        self._seen: _Seen | None = None

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
        if not re.fullmatch(r"/?[0-9]*", parts.path):  # redis-py would take /abc as /0
            raise ValueError("a session URL's path must be a database number, as in /0")
        query = parse_qs(parts.query)
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
        return cls(client, app_name=app_name, timeout=timeout)

    def __repr__(self) -> str:
        return f"RedisBackend({self.description!r})"

    # -- the Backend protocol: blocking, on the store's thread ----------------------------

    def open(self, change: Change) -> Record:
        return self.commit(change)

    def commit(self, change: Change) -> Record:
        return self._run(self._commit(change))

    def read(self) -> Record:
        return self._run(self._read(move_corrupt=True))

    def peek(self) -> Record:
        return self._run(self._read(move_corrupt=False))

    def remove(self) -> bool:
        return self._run(self._remove())

    def close(self) -> None:
        """Close the client and our loop; a later call (the exit flush) makes a new loop."""
        loop = self._loop
        if loop is None:
            return
        _refuse_a_running_loop(None)
        self._loop = None
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
        """Compare-and-set until it lands; one round trip when nobody wrote since we did."""
        deadline = time.monotonic() + self.timeout
        seen = self._seen
        if seen is None:
            seen = await self._settle(await self._state(), change)
        while True:
            base = seen.record
            if base is None:
                base = change.base_when_missing(self.description)
            record = change.apply(base)
            data = encode(record)
            if len(data) > MAX_FILE_SIZE:
                raise SessionStoreError(
                    f"cannot write {self.description}: the session would be {len(data)} "
                    f"bytes, over the {MAX_FILE_SIZE}-byte limit"
                )
            reply = await self._call(
                self._commit_script,
                [self._session_key, self._rev_key, self._applied_prefix + change.writer],
                [change.number, seen.rev, seen.digest, data, APPLIED_TTL_MS, MAX_FILE_SIZE],
            )
            status = _text(reply[0])
            if status == "ok":
                self._seen = _Seen(_text(reply[1]), record, _sha1(data))
                return record
            if status == "applied":
                return self._applied(self._judge(reply[1:]), change)
            if time.monotonic() >= deadline:
                raise LockTimeoutError(
                    f"{self.description} changed under every write for {self.timeout} s"
                )
            seen = await self._settle(reply[1:], change)

    def _applied(self, found: _Found, change: Change) -> Record:
        """A change sent again after its reply was lost: adopt what is stored now."""
        if isinstance(found, _Seen):
            self._seen = found
            if found.record is not None:
                return found.record
        else:
            self._seen = None  # the next write moves it aside
        # Applied, then deleted or spoiled since: the session it went into is gone.
        if change.known is None:
            raise SessionNotFoundError(f"no session in {self.description}")
        return change.apply(change.known)

    async def _settle(self, state: Sequence[Any], change: Change) -> _Seen:
        """The stored session to build on, a corrupt one moved aside (never overwritten) and
        replaced by what the change puts in its place."""
        while True:
            found = self._judge(state)
            if isinstance(found, _Seen):
                return found
            replacement = change.base_when_corrupt()
            moved = await self._set_aside(found)
            if moved is None:
                state = await self._state()  # it changed meanwhile: judge it afresh
                continue
            aside, rev = moved
            if replacement is None:
                raise CorruptSessionError(
                    f"{self.description} was corrupt ({found.why}); it was moved to {aside}"
                )
            logger.warning(
                "%s was corrupt (%s); moved it to %s and wrote a valid one in its place",
                self.description,
                found.why,
                aside,
            )
            # Built on the replacement as on a session we had stored: the id carries on.
            return _Seen(rev, replacement, "")

    async def _read(self, *, move_corrupt: bool) -> Record:
        found = self._judge(await self._state())
        if isinstance(found, _Corrupt):
            if not move_corrupt:
                raise CorruptSessionError(
                    f"{self.description} is corrupt ({found.why}); it was left in place"
                )
            moved = await self._set_aside(found)
            where = f"it was moved to {moved[0]}" if moved else "it has changed since"
            raise CorruptSessionError(f"{self.description} was corrupt ({found.why}); {where}")
        if move_corrupt:
            self._seen = found
        if found.record is None:
            raise SessionNotFoundError(f"no session in {self.description}")
        return found.record

    async def _remove(self) -> bool:
        existed, rev = await self._call(self._remove_script, [self._session_key, self._rev_key])
        self._seen = _Seen(_text(rev), None, "")
        return bool(existed)

    async def _state(self) -> Sequence[Any]:
        reply: Sequence[Any] = await self._call(
            self._read_script, [self._session_key, self._rev_key], [MAX_FILE_SIZE]
        )
        return reply

    def _judge(self, state: Sequence[Any]) -> _Found:
        """What a script found: a session, none, or a corrupt value (a newer one raises)."""
        rev, kind = _text(state[0]), _text(state[1])
        if kind == "missing":
            return _Seen(rev, None, "")
        if kind == "type":
            return _Corrupt(rev, f"a Redis {_text(state[2])}, not a string")
        if kind == "large":
            return _Corrupt(rev, f"{state[2]} bytes, larger than {MAX_FILE_SIZE}")
        data = state[2] if isinstance(state[2], bytes) else str(state[2]).encode()
        try:
            record = decode(data)
        except UnsupportedVersionError as exc:
            raise UnsupportedVersionError(
                f"{self.description}: {exc}; it is left as it is"
            ) from None
        except CorruptSessionError as exc:
            return _Corrupt(rev, str(exc))
        except RecursionError:
            return _Corrupt(rev, "nested too deeply to parse")
        return _Seen(rev, record, _sha1(data))

    async def _set_aside(self, found: _Corrupt) -> tuple[str, str] | None:
        """Rename the corrupt value to a key of its own, if it is still what we judged;
        (that key, the new revision), or None if it changed meanwhile."""
        now = datetime.now(timezone.utc)
        stem = f"{self._session_key}:corrupt-{now:%Y%m%dT%H%M%S}.{now.microsecond // 1000:03d}Z"
        aside, number = stem, 0
        while True:
            keys = [self._session_key, self._rev_key, aside]
            reply = await self._call(self._aside_script, keys, [found.rev])
            if reply[0] == 1:
                self._seen = None
                return aside, _text(reply[1])
            if reply[0] == 0:
                self._seen = None
                return None
            number += 1
            aside = f"{stem}-{number}"

    async def _call(
        self, script: AsyncScript, keys: list[str], args: list[Any] | None = None
    ) -> Any:
        """EVALSHA, or EVAL once Redis forgot the script (a restart, SCRIPT FLUSH)."""
        reply: Awaitable[Any] = script(keys=keys, args=args or [])
        return await reply


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
