"""The Lua scripts that make multi-key steps atomic: settle and take, give back, recover.

Each runs as one round trip and cannot interleave with another worker's step, which is
what keeps a message from being both given back and settled, or recovered twice.
"""

from __future__ import annotations

from .wire import HEADER_LIMIT

# Rewrites an item's header to count one more delivery; a seed-form item is wrapped in a
# header without reply_to ("reply the seed way"). Mirrors wire.split_envelope.
_BUMP = """
local function bump(item)
  local head = string.sub(item, 1, {limit})
  local lf = string.find(head, '\\n', 1, true)
  if string.sub(item, 1, 1) == '{' and lf and lf < #item then
    local ok, header = pcall(cjson.decode, string.sub(item, 1, lf - 1))
    if ok and type(header) == 'table' and header['mm'] ~= nil then
      header['n'] = (tonumber(header['n']) or 1) + 1
      return cjson.encode(header) .. string.sub(item, lf)
    end
  end
  return '{"mm":1,"n":2}\\n' .. item
end
"""

# Why a reply must not be pushed onto `key` (false when it may). Envelope replies go to
# mm:reply:... lists, which only our clients read. A seed-form reply goes to the list its
# request's id names, so it may go only to a list that does not exist yet, or to one that
# expires (a reply list already answered): never to a list without a TTL (a queue, a
# dead-letter list, someone's data), a key of another type, or a registered queue (whose
# workers set is `workers`, wire.workers_key; on a cluster it shares the slot of `key`).
_REPLY_GUARD = """
local function refusal(key, workers)
  if string.sub(key, 1, 9) == 'mm:reply:' then return false end
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= 'none' then
    if kind ~= 'list' then return 'holds a ' .. kind end
    if redis.call('PTTL', key) < 0 then return 'is a list without a TTL' end
  end
  if redis.call('EXISTS', workers) == 1 then
    return 'is a registered queue'
  end
  return false
end
"""

# Removes, from the consume (right) end of a queue, requests whose callers have given up:
# envelopes whose header has mm 1, no n or a positive whole n, and a deadline (a number, or
# decimal digits) before `cutoff` (ms). It stops at the first item that is not one (a live
# request, the seed form, anything the worker must judge itself), after `limit` items, or
# after 4 MiB examined, so that one run stays short. Mirrors wire.split_envelope.
_SWEEP = """
local function expired(item, cutoff)
  if string.byte(item, 1) ~= 123 then return false end
  local head = string.sub(item, 1, {limit})
  local lf = string.find(head, '\\n', 1, true)
  if not lf or lf == #item then return false end
  local ok, header = pcall(cjson.decode, string.sub(head, 1, lf - 1))
  if not ok or type(header) ~= 'table' or header['mm'] ~= 1 then return false end
  local n = header['n']
  if n ~= nil and (type(n) ~= 'number' or n < 1 or n % 1 ~= 0) then return false end
  local deadline = header['deadline']
  if type(deadline) == 'string' and string.match(deadline, '^%d+%.?%d*$') then
    deadline = tonumber(deadline)
  end
  if type(deadline) ~= 'number' or deadline ~= deadline then return false end
  return deadline > 0 and deadline < cutoff
end

local function sweep(queue, cutoff, limit)
  local removed, examined = 0, 0
  while removed < limit and examined < 4194304 do
    local item = redis.call('LINDEX', queue, -(removed + 1))
    if not item or not expired(item, cutoff) then break end
    examined = examined + #item
    removed = removed + 1
  end
  if removed > 0 then redis.call('LTRIM', queue, 0, -(removed + 1)) end
  return removed
end
"""

SWEEP = (
    _SWEEP
    + """
-- A client pushing to a queue drops what its callers gave up on, worker or none.
-- KEYS: queue. ARGV: cutoff (ms since the epoch), limit. Returns how many were removed.
return sweep(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]))
"""
)

CHECK_REPLY_LIST = (
    _REPLY_GUARD
    + """
-- Before a seed-form request runs: may its reply go to the list its id names?
-- KEYS: the reply list, its name's workers set. Returns why not, or false (nil).
return refusal(KEYS[1], KEYS[2])
"""
)

SETTLE = (
    _REPLY_GUARD
    + _SWEEP
    + """
-- Settle the messages finished since the last run, then take up to as many new ones as
-- the worker has room for (moving them to its processing list), in one round trip; before
-- taking, drop the expired requests at the consume end (up to ARGV[4] of them).
-- KEYS: processing list, queue, then one reply list per settled message.
-- ARGV: reply TTL, how many to take, the time (ms), the sweep limit, then per message:
-- the item, its reply ('' for none).
-- Returns {errors, taken, swept}: per message 0 or the error its reply push met (or why it
-- was refused: the list became unsafe since the worker checked it); the taken items; how
-- many expired requests were dropped.
local ttl = ARGV[1]
local errors = {}
for i = 3, #KEYS do
  local item, reply = ARGV[2 * i - 1], ARGV[2 * i]
  errors[i - 2] = 0
  if reply ~= '' then
    local refused = refusal(KEYS[i], 'mm:' .. KEYS[i] .. ':workers')
    if refused then
      errors[i - 2] = 'refused: the list ' .. refused
    else
      local pushed = redis.pcall('RPUSH', KEYS[i], reply)
      if type(pushed) == 'table' and pushed.err then
        errors[i - 2] = pushed.err
      else
        redis.call('EXPIRE', KEYS[i], ttl)
      end
    end
  end
  redis.call('LREM', KEYS[1], -1, item)
end
local taken, swept = {}, 0
if tonumber(ARGV[2]) > 0 then swept = sweep(KEYS[2], tonumber(ARGV[3]), tonumber(ARGV[4])) end
-- An error stops the taking, not the script: what it moved already must reach the worker
-- (Redis undoes nothing; on a Redis Cluster a slot being migrated fails the next move).
for i = 1, tonumber(ARGV[2]) do
  local item = redis.pcall('LMOVE', KEYS[2], KEYS[1], 'RIGHT', 'LEFT')
  if type(item) ~= 'string' then break end
  taken[i] = item
end
return {errors, taken, swept}
"""
)

BURY = (
    _REPLY_GUARD
    + """
-- Dead-letter one message: record it, send its error reply when it has a safe address,
-- remove it from the processing list. The first write fails or all happen (a script that
-- has not written yet is refused as a whole: OOM, READONLY), so it is retried cleanly.
-- KEYS: dead-letter list, processing list, reply list. ARGV: record, item, reply ('' for
-- none), reply TTL. Returns why the reply was refused, or false (nil).
local refused = false
if ARGV[3] ~= '' then refused = refusal(KEYS[3], 'mm:' .. KEYS[3] .. ':workers') end
redis.call('RPUSH', KEYS[1], ARGV[1])
if ARGV[3] ~= '' and not refused then
  redis.call('RPUSH', KEYS[3], ARGV[3])
  redis.call('EXPIRE', KEYS[3], ARGV[4])
end
redis.call('LREM', KEYS[2], -1, ARGV[2])
return refused
"""
)

REPLY = (
    _REPLY_GUARD
    + """
-- On a Redis Cluster, where a reply list lives in another slot than the queue: push the
-- replies to one list, set its expiry. SETTLE and BURY then run without replies.
-- KEYS: the reply list. ARGV: the workers set of its name (wire.workers_key), the reply
-- TTL, the replies. Returns why the list was refused, or false (nil).
local refused = refusal(KEYS[1], ARGV[1])
if refused then return refused end
redis.call('RPUSH', KEYS[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return false
"""
)
# Milliseconds since the epoch by Redis's clock: every time the no-worker rule compares is
# Redis's own, so clients' and workers' clocks don't matter to it.
_NOW = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

GIVE_BACK = (
    _BUMP.replace("{limit}", "%(limit)d")
    + _NOW
    + """
-- A worker stopping: its unsettled items go back to the consume end of the queue, oldest
-- last pushed so it is taken first. Items it handed over (ARGV[2..]) count a delivery.
-- The last worker of the queue to leave marks it seen alive until now (not until its
-- heartbeat would have expired): the no-worker window starts at its stop.
-- KEYS: processing list, queue, heartbeat, workers set, last-seen key. ARGV: worker id,
-- handed-over items.
local handed = {}
for i = 2, #ARGV do handed[ARGV[i]] = (handed[ARGV[i]] or 0) + 1 end
local items = redis.call('LRANGE', KEYS[1], 0, -1)
for i = 1, #items do
  local item = items[i]
  if (handed[item] or 0) > 0 then
    handed[item] = handed[item] - 1
    item = bump(item)
  end
  redis.call('RPUSH', KEYS[2], item)
end
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('SREM', KEYS[4], ARGV[1])
if redis.call('SCARD', KEYS[4]) == 0 and redis.call('EXISTS', KEYS[5]) == 1 then
  local now = now_ms()
  redis.call('SET', KEYS[5], string.format('%%.0f', now), 'PXAT',
    string.format('%%.0f', now + %(keep)d))
end
return #items
"""
)

RECOVER = (
    _BUMP.replace("{limit}", "%(limit)d")
    + """
-- A dead worker's items (its heartbeat has expired) go back to the consume end of the
-- queue, each counting one more delivery. Atomic, so two live workers can't both do it.
-- KEYS: processing list, queue, heartbeat, workers set. ARGV: worker id.
if redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
local items = redis.call('LRANGE', KEYS[1], 0, -1)
for i = 1, #items do redis.call('RPUSH', KEYS[2], bump(items[i])) end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[4], ARGV[1])
return #items
"""
)

SEEN_KEEP_MS = 3_600_000
"""How long the last-seen key of a queue outlives its last worker's heartbeat (ms): a
``worker_window`` beyond an hour acts as an hour."""

BEAT = (
    _NOW
    + """
-- KEYS: heartbeat, workers set, the queue's last-seen key. ARGV: TTL in ms, worker id,
-- the worker's record (JSON). The heartbeat holds the record; the last-seen key holds until
-- when (ms, Redis's clock) some worker of the queue is known to be alive: the latest
-- heartbeat expiry of any of them.
-- Returns 1 when the worker had been dropped from the set (recovered as dead) meanwhile.
local ttl = tonumber(ARGV[1])
redis.call('SET', KEYS[1], ARGV[3], 'PX', ttl)
local alive = now_ms() + ttl
local seen = tonumber(redis.call('GET', KEYS[3]))
if not seen or seen < alive then
  redis.call('SET', KEYS[3], string.format('%%.0f', alive), 'PXAT',
    string.format('%%.0f', alive + %(keep)d))
end
return redis.call('SADD', KEYS[2], ARGV[2])
"""
)

PUSH = (
    _NOW
    + """
-- A client's push under the no-worker rule: LPUSH the items onto the queue only when a
-- worker of the queue was seen alive within the window, atomically (no worker can vanish
-- between the check and the push, and a refused push writes nothing).
-- KEYS: queue, its last-seen key. ARGV: the window (ms, > 0), then the items.
-- Returns -1 (and pushes nothing) when no worker was seen alive; else {the queue's length,
-- for how many more ms pushes will be accepted unless a worker beats again}.
local seen = tonumber(redis.call('GET', KEYS[2]))
local left = seen and seen + tonumber(ARGV[1]) - now_ms()
if not left or left < 0 then return -1 end
local length = 0
for i = 2, #ARGV, 1000 do
  length = redis.call('LPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
return {length, left}
"""
)

REPLAY = """
-- Dead letters back on their queue: each record still in the dead-letter list is removed
-- and its request pushed where clients push (so it is taken after those already waiting).
-- A record another replay or purge took first is skipped: each goes back at most once.
-- KEYS: dead-letter list, queue. ARGV: record, request, record, request...
-- Returns, per pair, 1 when it was replayed, 0 when the record was gone.
local done = {}
for i = 1, #ARGV, 2 do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) == 1 then
    redis.call('LPUSH', KEYS[2], ARGV[i + 1])
    done[#done + 1] = 1
  else
    done[#done + 1] = 0
  end
end
return done
"""

PURGE = """
-- Dead letters deleted by value. KEYS: dead-letter list. ARGV: the records.
-- Returns how many were still there.
local removed = 0
for i = 1, #ARGV do removed = removed + redis.call('LREM', KEYS[1], 1, ARGV[i]) end
return removed
"""


def with_header_limit(script: str, limit: int) -> str:
    """`script` with the envelope header limit filled in."""
    return script % {"limit": limit, "keep": SEEN_KEEP_MS}


def _header_limit(script: str) -> str:
    return script.replace("{limit}", str(HEADER_LIMIT))


SWEEP = _header_limit(SWEEP)
SETTLE = _header_limit(SETTLE)
BEAT = BEAT % {"keep": SEEN_KEEP_MS}
