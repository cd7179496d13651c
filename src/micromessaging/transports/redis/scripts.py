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

GIVE_BACK = (
    _BUMP.replace("{limit}", "%(limit)d")
    + """
-- A worker stopping: its unsettled items go back to the consume end of the queue, oldest
-- last pushed so it is taken first. Items it handed over (ARGV[2..]) count a delivery.
-- KEYS: processing list, queue, heartbeat, workers set. ARGV: worker id, handed-over items.
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

BEAT = """
-- KEYS: heartbeat, workers set. ARGV: TTL in ms, worker id, timestamp.
-- Returns 1 when the worker had been dropped from the set (recovered as dead) meanwhile.
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[1])
return redis.call('SADD', KEYS[2], ARGV[2])
"""


def with_header_limit(script: str, limit: int) -> str:
    """`script` with the envelope header limit filled in."""
    return script % {"limit": limit}


def _header_limit(script: str) -> str:
    return script.replace("{limit}", str(HEADER_LIMIT))


SWEEP = _header_limit(SWEEP)
SETTLE = _header_limit(SETTLE)
