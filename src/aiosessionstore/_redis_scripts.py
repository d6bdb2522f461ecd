"""The Lua scripts of the Redis backend: each is one atomic step on the session's keys.

Every script checks all it can before its first write: Redis does not roll a script back.
KEYS[1] is the session, KEYS[2] the revision, KEYS[3] the deltas, KEYS[4] the epoch, KEYS[5]
the count of pushes, in every script; ``_redis`` says what each key holds.
"""

from __future__ import annotations

__all__ = ("DELTAS_ASIDE", "MERGE", "READ", "REMOVE", "REWRITE", "SET_ASIDE", "VERSION_1_HEAD")

#: How ``encode`` begins a session of version 1: the version's line whole, comma and all, so
#: that version 10 or 100 does not pass for it.
VERSION_1_HEAD = '{\n  "version": 1,\n'

#: That head in Lua, and the index of its last byte.
_LUA_HEAD = "'" + VERSION_1_HEAD.replace("\n", "\\n") + "'"
_LAST = str(len(VERSION_1_HEAD) - 1)

_PRELUDE = """
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
-- How many deltas merges pushed, counted on from where the first push found the server's
-- clock (0: none yet), or nil and an error.
local function pushed_of()
  local kind = redis.call('TYPE', KEYS[5])['ok']
  if kind == 'none' then return 0 end
  local pushed = kind == 'string' and redis.call('GET', KEYS[5])
  -- What INCR takes (no sign, no leading zero), and exact in Lua's numbers (below 2^53).
  if not pushed or not (pushed == '0' or string.match(pushed, '^[1-9][0-9]*$'))
      or #pushed > 16 or tonumber(pushed) >= 9007199254740992 then
    return nil, KEYS[5] .. ' holds no count of pushes'
  end
  return tonumber(pushed)
end
-- The revision, once it and the count of pushes are known sound; else nil and an error.
local function sound_rev()
  local rev, err = rev_of()
  if not rev then return nil, err end
  local pushed, err2 = pushed_of()
  if not pushed then return nil, err2 end
  return rev
end
-- The list's mark: the pushes counted, less its length. A merge's push leaves it as it is;
-- anything else that changes the length moves it (a fold's trim, which bumps the revision
-- too; a DEL, LPOP or RPUSH by hand, which does not). So at the same revision and mark, the
-- list is the one read, with only pushes after it. The caller checked that it is a list.
local function mark_of()
  return pushed_of() - redis.call('LLEN', KEYS[3])
end
-- Only ever compared for equality: any string will do, anything else is none.
local function epoch_of()
  if redis.call('TYPE', KEYS[4])['ok'] ~= 'string' then return '' end
  return redis.call('GET', KEYS[4])
end
local function deltas_kind()
  local kind = redis.call('TYPE', KEYS[3])['ok']
  if kind == 'none' or kind == 'list' then return nil end
  return kind
end
-- The bytes the deltas take as Redis counts them (a little over their length), or a count
-- past max: the list is never read whole to learn it.
local function deltas_bytes(max)
  -- Lua's pcall: an unknown command (renamed away) raises even under redis.pcall.
  local ok, used = pcall(redis.call, 'MEMORY', 'USAGE', KEYS[3], 'SAMPLES', '0')
  if ok and type(used) == 'number' then return used end
  if ok and not used then return 0 end
  -- MEMORY refused (renamed, denied by an ACL, not this server's): add the entries up, a
  -- few at a time.
  local total, first, n = 0, 0, redis.call('LLEN', KEYS[3])
  while first < n and total <= max do
    for _, entry in ipairs(redis.call('LRANGE', KEYS[3], first, first + 99)) do
      total = total + #entry
    end
    first = first + 100
  end
  return total
end
-- Why the deltas cannot be read ({kind, detail, count} for the caller; nil: they can:
-- at most max bytes, and max / 128 entries), the bytes they take and how many there are.
local function deltas_problem(max)
  local bad = deltas_kind()
  if bad then return {'type', bad, 0}, 0, 0 end
  local used, n = deltas_bytes(max), redis.call('LLEN', KEYS[3])
  if used > max or n > max / 128 then return {'large', used, n}, used, n end
  return nil, used, n
end
-- The number of the writer's last change applied (0: none), or nil and an error.
local function applied_of(key)
  local kind = redis.call('TYPE', key)['ok']
  if kind == 'none' then return 0 end
  local done = kind == 'string' and redis.call('GET', key)
  -- Plain digits only: tonumber would take '1e999' as infinity, and skip every change.
  if not done or not string.match(done, '^[0-9]+$') or #done > 15 then
    return nil, key .. ' holds no change number'
  end
  return tonumber(done)
end
local function state(max)
  local kind = redis.call('TYPE', KEYS[1])['ok']
  if kind == 'none' then return 'missing', false end
  if kind ~= 'string' then return 'type', kind end
  local size = redis.call('STRLEN', KEYS[1])
  if size > max then return 'large', size end
  return 'value', redis.call('GET', KEYS[1])
end
-- The value's length (-1: none; -2: a key of another type).
local function size_of()
  local kind = redis.call('TYPE', KEYS[1])['ok']
  if kind == 'none' then return -1 end
  if kind ~= 'string' then return -2 end
  return redis.call('STRLEN', KEYS[1])
end
-- What the caller needs to see the session: {rev, from, kind, value, deltas from 'from' on,
-- epoch, mark}. Only the deltas after the count it holds where it holds this revision
-- (mine), the list's mark (its deltas are still the first ones) and the value's length;
-- else the session's bytes and the whole list (another revision; a list or a value changed
-- by hand at the same revision). The caller checked deltas_problem first.
local function view(rev, max, mine, count, size, mark)
  local n, now = redis.call('LLEN', KEYS[3]), mark_of()
  if rev == mine and now == mark and n >= count and size_of() == size then
    return {rev, count, 'same', false, redis.call('LRANGE', KEYS[3], count, -1), epoch_of(), now}
  end
  local kind, value = state(max)
  return {rev, 0, kind, value, redis.call('LRANGE', KEYS[3], 0, -1), epoch_of(), now}
end
-- A new revision; with identity true also a new epoch (the revision's value): the session
-- was reset, renewed, replaced, deleted, or lost counts (a corrupt key moved aside).
local function bump(identity)
  if redis.call('EXISTS', KEYS[2]) == 1 then
    redis.call('INCR', KEYS[2])
  else
    -- A revision lost (a flushed database) restarts from the server's clock in
    -- microseconds, far above any count of writes: a stale writer's revision never matches.
    local now = redis.call('TIME')
    redis.call('SET', KEYS[2], now[1] .. string.rep('0', 6 - #now[2]) .. now[2])
  end
  local rev = redis.call('GET', KEYS[2])
  if identity then redis.call('SET', KEYS[4], rev) end
  return rev
end
"""

#: KEYS: session, rev, deltas, epoch, pushed, applied. ARGV: number, delta, TTL of applied
#: (ms), the revision, value's length, epoch and number of deltas the writer holds, largest
#: value (and list) read, how often to fold, the list's mark the writer holds. Replies
#: {status, rev, length of the list, view or false}: a view only where the writer must read
#: (its change applied before, a value not judged, a list too full to take the delta, the
#: session reset, renewed, replaced, deleted or set by hand since, or its push makes the list
#: a multiple of the fold's), and otherwise nothing of the session, nor of other writers'
#: deltas.
MERGE = (
    (
        _PRELUDE
        + """
local rev, err = sound_rev()
if not rev then return redis.error_reply(err) end
local max, size, held = tonumber(ARGV[8]), size_of(), tonumber(ARGV[5])
local problem, used, count = deltas_problem(max)
if problem then return {'deltas', rev, problem[1], problem[2], problem[3]} end
local done, err2 = applied_of(KEYS[6])
if not done then return redis.error_reply(err2) end
local mark = tonumber(ARGV[10])
if tonumber(ARGV[1]) <= done then
  return {'applied', rev, 0, view(rev, max, ARGV[4], tonumber(ARGV[7]), held, mark)}
end
-- A value the writer has not judged must begin as encode writes version 1, its line whole
-- (without the comma, version 10 or 100 would pass); else the writer judges it first (a newer
-- format is refused with nothing written, a corrupt one replaced).
local same = rev == ARGV[4] and size == held
if size >= 0 and not same then
  if redis.call('GETRANGE', KEYS[1], 0, @LAST@) ~= @HEAD@ then
    return {'check', rev, 0, view(rev, max, '-', 0, 0, 0)}
  end
end
-- Never past half the bound (Redis counts a little over the bytes): the writer folds the
-- list and its change by compare-and-set instead.
if used + #ARGV[2] > max / 2 or count + 1 > max / 256 then
  return {'full', rev, 0, view(rev, max, '-', 0, 0, 0)}
end
if redis.call('EXISTS', KEYS[5]) == 0 then
  -- Counted from the clock in microseconds, so that a list deleted by hand with its count
  -- never takes the mark of the list it replaced.
  local now = redis.call('TIME')
  redis.call('SET', KEYS[5], now[1] .. string.rep('0', 6 - #now[2]) .. now[2])
end
local n = redis.call('RPUSH', KEYS[3], ARGV[2])
redis.call('INCR', KEYS[5])
redis.call('SET', KEYS[6], ARGV[1], 'PX', ARGV[3])
if epoch_of() ~= ARGV[6] or size < 0 or (rev == ARGV[4] and not same)
    or n % tonumber(ARGV[9]) == 0 then
  return {'ok', rev, n, view(rev, max, ARGV[4], tonumber(ARGV[7]), held, mark)}
end
return {'ok', rev, n, false}
"""
    )
    .replace("@LAST@", _LAST)
    .replace("@HEAD@", _LUA_HEAD)
)

#: KEYS: session, rev, deltas, epoch, pushed, applied, aside. ARGV: expected rev, deltas
#: folded, new value, expected SHA-1 of the value ("" for none), number (0: none), TTL of
#: applied (ms), largest value returned, "1" to rename the (corrupt) value to aside first, "1"
#: for a new epoch (anything but a fold or a merge), the list's mark when read. Replies
#: {'ok', new rev, epoch, mark} once written, else a status and a view to retry from.
REWRITE = (
    _PRELUDE
    + """
local rev, err = sound_rev()
if not rev then return redis.error_reply(err) end
local max, count, number = tonumber(ARGV[7]), tonumber(ARGV[2]), tonumber(ARGV[5])
local problem = deltas_problem(max)
if problem then return {'deltas', rev, problem[1], problem[2], problem[3]} end
if number > 0 then
  local done, err2 = applied_of(KEYS[6])
  if not done then return redis.error_reply(err2) end
  if number <= done then return {'applied', view(rev, max, '-', 0, 0, 0)} end
end
if rev ~= ARGV[1] then return {'conflict', view(rev, max, '-', 0, 0, 0)} end
-- The deltas read must be the list's first: only pushes came after them.
if redis.call('LLEN', KEYS[3]) < count or mark_of() ~= tonumber(ARGV[10]) then
  return {'conflict', view(rev, max, '-', 0, 0, 0)}
end
local kind = redis.call('TYPE', KEYS[1])['ok']
if ARGV[8] == '1' then
  if kind == 'none' then return {'conflict', view(rev, max, '-', 0, 0, 0)} end
  if redis.call('EXISTS', KEYS[7]) == 1 then return {'taken'} end
else
  -- The revision matches; the value must too, should anything have set it by hand.
  local digest = ''
  if kind == 'string' then
    -- A value set by hand past the bound is not read whole: the reply says it is too large.
    if redis.call('STRLEN', KEYS[1]) > max then
      return {'conflict', view(rev, max, '-', 0, 0, 0)}
    end
    digest = redis.sha1hex(redis.call('GET', KEYS[1]))
  elseif kind ~= 'none' then
    digest = kind
  end
  if digest ~= ARGV[4] then return {'conflict', view(rev, max, '-', 0, 0, 0)} end
end
if ARGV[8] == '1' then redis.call('RENAME', KEYS[1], KEYS[7]) end
redis.call('SET', KEYS[1], ARGV[3])
if count > 0 then redis.call('LTRIM', KEYS[3], count, -1) end
local new = bump(ARGV[9] == '1')
if number > 0 then redis.call('SET', KEYS[6], ARGV[5], 'PX', ARGV[6]) end
return {'ok', new, epoch_of(), mark_of()}
"""
)

#: KEYS: session, rev, deltas, epoch, pushed. ARGV: largest value (and list) returned, the
#: revision the reader holds, how many deltas it holds, the length of the value it holds,
#: the list's mark it holds.
READ = (
    _PRELUDE
    + """
local rev, err = sound_rev()
if not rev then return redis.error_reply(err) end
local max = tonumber(ARGV[1])
local problem = deltas_problem(max)
if problem then return {'deltas', rev, problem[1], problem[2], problem[3]} end
return {'ok', view(rev, max, ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]))}
"""
)

#: KEYS: session, rev, deltas, epoch, pushed, aside. ARGV: the revision at which the value
#: was judged corrupt. Returns {1, new rev} once moved; {0} if anything changed since; {-1} if
#: aside is taken.
SET_ASIDE = (
    _PRELUDE
    + """
local rev, err = sound_rev()
if not rev then return redis.error_reply(err) end
if rev ~= ARGV[1] or redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
if redis.call('EXISTS', KEYS[6]) == 1 then return {-1} end
redis.call('RENAME', KEYS[1], KEYS[6])
return {1, bump(true)}
"""
)

#: KEYS: session, rev, deltas, epoch, pushed, aside. ARGV: the revision at which the deltas
#: were judged corrupt, the list's mark and length when read ("-" and 0 where it was not read:
#: not a list, or too large), then its sound entries to push back, in order; the entries
#: pushed since it was read follow them. Returns {1, new rev, how many were pushed since}
#: once moved; {0} if anything else changed since; {-1} if aside is taken.
DELTAS_ASIDE = (
    _PRELUDE
    + """
local rev, err = sound_rev()
if not rev then return redis.error_reply(err) end
if rev ~= ARGV[1] or redis.call('EXISTS', KEYS[3]) == 0 then return {0} end
local read, since = tonumber(ARGV[3]), 0
if ARGV[2] ~= '-' then
  -- Merges push without a new revision: what came after the read goes back after the rest.
  if deltas_kind() or mark_of() ~= tonumber(ARGV[2]) then return {0} end
  since = redis.call('LLEN', KEYS[3]) - read
  if since < 0 then return {0} end
end
if redis.call('EXISTS', KEYS[6]) == 1 then return {-1} end
redis.call('RENAME', KEYS[3], KEYS[6])
for i = 4, #ARGV do redis.call('RPUSH', KEYS[3], ARGV[i]) end
if since > 0 then
  for _, entry in ipairs(redis.call('LRANGE', KEYS[6], read, -1)) do
    redis.call('RPUSH', KEYS[3], entry)
  end
end
return {1, bump(true), since}
"""
)

#: KEYS: session, rev, deltas, epoch, pushed. Returns {1 if a session existed else 0, new
#: rev, the list's mark}.
REMOVE = (
    _PRELUDE
    + """
local rev, err = sound_rev()
if not rev then return redis.error_reply(err) end
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'none' and kind ~= 'string' then
  return redis.error_reply(KEYS[1] .. ' is a ' .. kind .. ', not a session; left as it is')
end
local bad = deltas_kind()
if bad then
  return redis.error_reply(KEYS[3] .. ' is a ' .. bad .. ', not a list; left as it is')
end
local existed = redis.call('DEL', KEYS[1], KEYS[3])
return {existed > 0 and 1 or 0, bump(true), mark_of()}
"""
)
