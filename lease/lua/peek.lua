-- peek.lua: read a page of one state of a queue, each element cut to a
-- prefix so that payloads stay in Redis. Writes nothing.
-- KEYS[1] ackd:{q}:claim      LIST  (state ready: the claim list comes first)
-- KEYS[2] ackd:{q}:ready      LIST
-- KEYS[3] ackd:{q}:held       HASH  token -> lease record
-- KEYS[4] ackd:{q}:due        ZSET
-- KEYS[5] ackd:{q}:delayed    ZSET
-- KEYS[6] ackd:{q}:dead       ZSET
-- KEYS[7] ackd:{q}:deadmsgs   HASH  id -> dead record
-- KEYS[8] ackd:{q}:leases     HASH  id -> format-1 lease record
-- KEYS[9] ackd:{q}:deadlines  ZSET  (format 1)
-- ARGV[1] state: ready, inflight, delayed or dead
-- ARGV[2] offset, ARGV[3] count (at most this many elements returned)
-- ARGV[4] prefix bytes of each element to return
-- ARGV[5] dead only: reason to match, '' for any
-- ARGV[6] dead only: how many dead letters to examine at most (>= count)
-- returns {next offset or -1 at the end, then per element:
--          id ('' on the ready list), score ms (0 on the ready list), length, prefix}
-- State inflight lists the leases keyed by token by deadline, then those
-- of format 1, one offset over both: the id of a lease keyed by token is
-- its record's (the token if the record does not parse), the prefix the
-- record's (format 1: token "|" envelope).
local state, off, count, plen = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {-1}
local function add(id, score, el)
  out[#out + 1] = id
  out[#out + 1] = score
  out[#out + 1] = #el
  out[#out + 1] = string.sub(el, 1, plen)
end
if state == 'ready' then
  local nclaim = redis.call('LLEN', KEYS[1])
  local els = {}
  if off < nclaim then
    els = redis.call('LRANGE', KEYS[1], off, off + count - 1)
  end
  if #els < count then
    local more = redis.call('LRANGE', KEYS[2], math.max(off - nclaim, 0), math.max(off - nclaim, 0) + count - #els - 1)
    for i = 1, #more do els[#els + 1] = more[i] end
  end
  for i = 1, #els do add('', 0, els[i]) end
  if #els == count then out[1] = off + count end
elseif state == 'delayed' then
  local r = redis.call('ZRANGE', KEYS[5], off, off + count - 1, 'WITHSCORES')
  for i = 1, #r, 2 do add('', tonumber(r[i + 1]), r[i]) end
  if #r == 2 * count then out[1] = off + count end
elseif state == 'inflight' then
  local n2 = redis.call('ZCARD', KEYS[4])
  local got = 0
  if off < n2 then
    local r = redis.call('ZRANGE', KEYS[4], off, off + count - 1, 'WITHSCORES')
    for i = 1, #r, 2 do
      local rec = redis.call('HGET', KEYS[3], r[i]) or ''
      local id = string.sub(rec, 1, MARKLEN) == MARK and take_env(rec)
      add(id or r[i], tonumber(r[i + 1]), rec)
    end
    got = #r / 2
  end
  if got < count then
    local from = math.max(off - n2, 0)
    local r = redis.call('ZRANGE', KEYS[9], from, from + count - got - 1, 'WITHSCORES')
    for i = 1, #r, 2 do
      add(r[i], tonumber(r[i + 1]), redis.call('HGET', KEYS[8], r[i]) or '')
    end
    got = got + #r / 2
  end
  if got == count then out[1] = off + count end
elseif state == 'dead' then
  local reason = ARGV[5]
  local want = reason .. '|'
  local r = redis.call('ZRANGE', KEYS[6], off, off + tonumber(ARGV[6]) - 1, 'WITHSCORES')
  local n, seen = 0, 0
  for i = 1, #r, 2 do
    if n == count then break end
    seen = seen + 1
    local rec = redis.call('HGET', KEYS[7], r[i]) or ''
    if reason == '' or string.sub(rec, 1, #want) == want then
      n = n + 1
      add(r[i], tonumber(r[i + 1]), rec)
    end
  end
  if n == count or #r == 2 * tonumber(ARGV[6]) then out[1] = off + seen end
else
  return redis.error_reply('ERR peek: unknown state ' .. state)
end
return out
