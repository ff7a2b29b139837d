"""
The Lua script `RedisBreakerStore` runs: the breaker's rules as one atomic step in Redis.

It implements the transitions of `machine` (which is its reference model: the tests
run both on the same operations and compare) over four keys of one hash slot:

- KEYS[1] a hash: ``state``, ``gen`` (transitions so far), ``opened_at``, ``psucc``
  (successful probes), ``tokens`` (permit numbers handed out);
- KEYS[2] a sorted set: the half-open probe permits, scored by when their lease ends
  (a prober that crashed holds its permit only until then);
- KEYS[3] a string: the count window's ring, one byte per call (bit 0 failed, bit 1
  slow), written with SETRANGE in O(1);
- KEYS[4] a hash: the closed state's counts: ``fails`` (consecutive run), or ``wc``,
  ``wf``, ``ws`` (calls, failures, slow calls in the window) with ``idx`` (ring
  position) or ``ep`` and ``c<i>``, ``f<i>``, ``s<i>`` (ten time buckets, as
  `accounting.TimeWindow`). Closing deletes it.

ARGV: op (admit, record, release, open, close), now in seconds ('' = Redis' TIME, so
hosts need not agree on the time), the rules as one space-separated string (mode: c
consecutive, n count window, t time window; failure_threshold, window,
window_duration, failure_rate, slow_call_rate, min_calls, reset_timeout,
success_threshold, half_open_max_calls, probe lease), then for record and release: the
generation the call was admitted in, its permit, failed (0/1), slow (0/1).

Returns one string, space-separated: admitted (0/1), state, generation, retry_in,
permit (- for none), calls, failures, slow calls (the counts -1 when not read).
One string, not an array, and the rules in one argument: the client packs and parses
fewer items (most of a round trip's cost on the client). Fractions leave as %.17g.
"""

from __future__ import annotations

__all__ = ["SCRIPT"]

SCRIPT = """
local h, permits, ring, counts = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local op = ARGV[1]
local now = tonumber(ARGV[2])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local r = {}
for word in string.gmatch(ARGV[3], '%S+') do r[#r + 1] = word end
local mode = r[1]
local threshold, size, duration = tonumber(r[2]), tonumber(r[3]), tonumber(r[4])
local failure_rate, slow_rate = tonumber(r[5]), tonumber(r[6])
local min_calls, reset = tonumber(r[7]), tonumber(r[8])
local success_threshold, max_probes = tonumber(r[9]), tonumber(r[10])
local lease = tonumber(r[11])

local v = redis.call('HMGET', h, 'state', 'gen', 'opened_at')
local state = v[1]
if state ~= 'open' and state ~= 'half-open' then state = 'closed' end
local gen = tonumber(v[2]) or 0
local opened_at = tonumber(v[3]) or 0

local function num(x) return tonumber(x) or 0 end

local function advance()
  local width = duration / 10
  local epoch = math.floor(now / width)
  local last = tonumber(redis.call('HGET', counts, 'ep'))
  if last == nil then
    redis.call('HSET', counts, 'ep', epoch)
  elseif epoch > last then
    for e = last + 1, math.min(epoch, last + 10) do
      local i = e % 10
      local b = redis.call('HMGET', counts, 'c' .. i, 'f' .. i, 's' .. i)
      -- 0 - n, not -n: Lua writes -0 as "-0", which HINCRBY refuses as a number
      redis.call('HINCRBY', counts, 'wc', 0 - num(b[1]))
      redis.call('HINCRBY', counts, 'wf', 0 - num(b[2]))
      redis.call('HINCRBY', counts, 'ws', 0 - num(b[3]))
      redis.call('HDEL', counts, 'c' .. i, 'f' .. i, 's' .. i)
    end
    redis.call('HSET', counts, 'ep', epoch)
  end
  return epoch
end

local function totals()
  if mode == 'c' then
    local f = num(redis.call('HGET', counts, 'fails'))
    return {f, f, 0}
  end
  if mode == 't' then advance() end
  local t = redis.call('HMGET', counts, 'wc', 'wf', 'ws')
  return {num(t[1]), num(t[2]), num(t[3])}
end

local function exceeded(calls, failures, slow)
  if calls < min_calls then return false end
  return failures / calls >= failure_rate or slow / calls >= slow_rate
end

local function account(failed, slow)
  if mode == 'c' then
    if failed == 1 then return redis.call('HINCRBY', counts, 'fails', 1) >= threshold end
    redis.call('HSET', counts, 'fails', 0)
    return false
  end
  if mode == 'n' then
    local idx = num(redis.call('HGET', counts, 'idx')) % size
    local old = redis.call('GETRANGE', ring, idx, idx)
    old = (old == '') and 0 or string.byte(old)
    redis.call('SETRANGE', ring, idx, string.char(failed + 2 * slow))
    redis.call('HSET', counts, 'idx', (idx + 1) % size)
    local calls = num(redis.call('HGET', counts, 'wc'))
    if calls < size then calls = redis.call('HINCRBY', counts, 'wc', 1) end
    local failures = redis.call('HINCRBY', counts, 'wf', failed - old % 2)
    local slows = redis.call('HINCRBY', counts, 'ws', slow - math.floor(old / 2))
    return exceeded(calls, failures, slows)
  end
  local i = advance() % 10
  redis.call('HINCRBY', counts, 'c' .. i, 1)
  redis.call('HINCRBY', counts, 'f' .. i, failed)
  redis.call('HINCRBY', counts, 's' .. i, slow)
  local calls = redis.call('HINCRBY', counts, 'wc', 1)
  local failures = redis.call('HINCRBY', counts, 'wf', failed)
  return exceeded(calls, failures, redis.call('HINCRBY', counts, 'ws', slow))
end

local function move(to)
  gen = gen + 1
  state = to
  redis.call('HSET', h, 'state', to, 'gen', gen, 'psucc', 0)
  redis.call('DEL', permits)
  if to == 'open' then
    opened_at = now
    redis.call('HSET', h, 'opened_at', string.format('%.17g', now))
  elseif to == 'closed' then
    redis.call('DEL', ring, counts)
  end
end

local function reply(admitted, permit, counted)
  local wait = 0
  if state == 'open' then wait = math.max(0, opened_at + reset - now) end
  local t = counted and totals() or {-1, -1, -1}
  return string.format('%d %s %d %.17g %s %d %d %d', admitted, state, gen, wait,
                       permit, t[1], t[2], t[3])
end

if op == 'admit' then
  if state == 'closed' then return reply(1, '-', false) end
  if state == 'open' then
    if opened_at + reset - now > 0 then return reply(0, '-', true) end
    move('half-open')
  end
  redis.call('ZREMRANGEBYSCORE', permits, '-inf', now)
  if redis.call('ZCARD', permits) >= max_probes then return reply(0, '-', false) end
  local token = redis.call('HINCRBY', h, 'tokens', 1)
  redis.call('ZADD', permits, now + lease, token)
  return reply(1, tostring(token), false)
end

if op == 'open' or op == 'close' then
  local to = (op == 'open') and 'open' or 'closed'
  if state ~= to then
    move(to)
  elseif to == 'closed' then
    redis.call('DEL', ring, counts)
  end
  return reply(1, '-', true)
end

-- record / release: the call's permit goes back whatever happened
if ARGV[5] ~= '-' then redis.call('ZREM', permits, ARGV[5]) end
if op == 'release' or tonumber(ARGV[4]) ~= gen then return reply(1, '-', false) end
local failed, slow = tonumber(ARGV[6]), tonumber(ARGV[7])
if state == 'half-open' then
  if failed == 1 or slow == 1 then
    move('open')
  elseif redis.call('HINCRBY', h, 'psucc', 1) >= success_threshold then
    move('closed')
  end
elseif state == 'closed' and account(failed, slow) then
  move('open')
end
return reply(1, '-', state ~= 'half-open')
"""
