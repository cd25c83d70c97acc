-- sweep.lua: requeue every due lease of a queue, promote due delayed
-- messages and return claimed-but-untaken elements, all bounded by limit.
-- Deadlines and due times more than a week ahead (not ackd's) are first
-- pulled in to now + a week, so that nothing waits forever.
-- Leases of both formats: keyed by token (held, due), then format 1 (keyed
-- by id: leases, deadlines), which this version only reads and ends.
-- KEYS[1] ackd:{q}:ready      LIST
-- KEYS[2] ackd:{q}:held       HASH
-- KEYS[3] ackd:{q}:due        ZSET
-- KEYS[4] ackd:{q}:dead       ZSET
-- KEYS[5] ackd:{q}:deadmsgs   HASH
-- KEYS[6] ackd:{q}:delayed    ZSET
-- KEYS[7] ackd:{q}:claim      LIST
-- KEYS[8] ackd:{q}:paused     STRING (only read)
-- KEYS[9] ackd:{q}:counts     HASH (only read)
-- KEYS[10] ackd:{q}:leases    HASH (format 1)
-- KEYS[11] ackd:{q}:deadlines ZSET (format 1)
-- ARGV[1] limit (per kind of work; leases of both formats together)
-- ARGV[2] 1 to also move the claim list back to the head of ready, else 0
-- ARGV[3] bytes of the head element to return (its envelope id tells when
--         it was pushed)
-- returns {requeued, dead_expired, dead_malformed, promoted, reclaimed,
--          next_deadline_ms or -1, next_delayed_ms or -1, more (0/1),
--          then the queue's counts after the sweep: ready (ready + claim
--          lists), in_flight, delayed, dead,
--          paused_at_ms or -1, now_ms, the head element's first ARGV[3]
--          bytes or '' (the one string in the reply),
--          then lag_ms of each requeued or dead-lettered lease...,
--          then, the last three, the running totals acked, purged, replayed}
local limit = tonumber(ARGV[1])
local denied = expire_refused(KEYS[1], KEYS[2], KEYS[3], KEYS[10], KEYS[11], KEYS[4], KEYS[5]) or
  refused_any('RPUSH', KEYS[1], 'ZREM', KEYS[6], 'ZRANGEBYSCORE', KEYS[6], 'ZRANGEBYSCORE', KEYS[3],
    'ZRANGEBYSCORE', KEYS[11], 'ZRANGE', KEYS[3], 'ZRANGE', KEYS[11], 'ZRANGE', KEYS[6]) or
  refused_any('ZADD', KEYS[3], 'ZADD', KEYS[11], 'ZADD', KEYS[6], 'LLEN', KEYS[1], 'ZCARD', KEYS[3],
    'ZCARD', KEYS[11], 'GET', KEYS[8], 'LINDEX', KEYS[1]) or
  refused('LMOVE', KEYS[7], KEYS[1]) or refused('HGET', KEYS[9])
if denied then return denied end
local now = now_ms()
pull_in(KEYS[3], now + MAX_MS, limit)
pull_in(KEYS[11], now + MAX_MS, limit)
pull_in(KEYS[6], now + MAX_MS, limit)
local out = {0, 0, 0, 0, 0, -1, -1, 0, 0, 0, 0, 0, -1, now, ''}
-- ends the due leases of one format: expire(member) for each
local function expire_due(k_due, left, expire)
  local due = redis.call('ZRANGEBYSCORE', k_due, '-inf', '(' .. now, 'WITHSCORES', 'LIMIT', 0, left)
  for i = 1, #due, 2 do
    local r = expire(due[i])
    if r > 0 then
      out[r] = out[r] + 1
      out[#out + 1] = math.min(now - tonumber(due[i + 1]), now) -- a -inf deadline: lag now
    end
  end
  return #due / 2
end
local n = expire_due(KEYS[3], limit, function(token)
  return expire_one(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], token, now, true)
end)
if n < limit then
  n = n + expire_due(KEYS[11], limit - n, function(id)
    return expire_one(KEYS[1], KEYS[10], KEYS[11], KEYS[4], KEYS[5], id, now)
  end)
end
out[4] = promote(KEYS[6], KEYS[1], now, limit)
if ARGV[2] == '1' then
  local k = 0
  while k < limit and redis.call('LMOVE', KEYS[7], KEYS[1], 'RIGHT', 'LEFT') do
    k = k + 1
  end
  out[5] = k
end
out[6] = first_deadline(KEYS[3], KEYS[11]) or -1
out[7] = first_score(KEYS[6]) or -1
if n >= limit or out[4] >= limit or out[5] >= limit then out[8] = 1 end
out[9] = redis.call('LLEN', KEYS[1]) + redis.call('LLEN', KEYS[7])
out[10] = redis.call('ZCARD', KEYS[3]) + redis.call('ZCARD', KEYS[11])
out[11] = redis.call('ZCARD', KEYS[6])
out[12] = redis.call('ZCARD', KEYS[4])
local paused = redis.call('GET', KEYS[8])
out[13] = (paused and tonumber(paused)) or -1
local head = redis.call('LINDEX', KEYS[1], 0)
if head then out[15] = string.sub(head, 1, tonumber(ARGV[3])) end
for _, f in ipairs({'acked', 'purged', 'replayed'}) do out[#out + 1] = total(KEYS[9], f) end
return out
