-- stats.lua: one queue's counts and times, read in one atomic step. Writes nothing.
-- KEYS[1] ackd:{q}:ready      LIST
-- KEYS[2] ackd:{q}:claim      LIST
-- KEYS[3] ackd:{q}:due        ZSET
-- KEYS[4] ackd:{q}:delayed    ZSET
-- KEYS[5] ackd:{q}:dead       ZSET
-- KEYS[6] ackd:{q}:paused     STRING
-- KEYS[7] ackd:{q}:counts     HASH (only read)
-- KEYS[8] ackd:{q}:deadlines  ZSET (format 1)
-- ARGV[1] bytes of the head element to return (its envelope id tells when it was pushed)
-- returns {ready, claim, in_flight, delayed, dead, paused_at_ms or -1,
--          earliest_deadline_ms or -1, next_due_ms or -1, now_ms, head prefix or '',
--          then the running totals acked, purged, replayed}
-- in_flight and earliest_deadline_ms cover leases of both formats.
local paused = redis.call('GET', KEYS[6])
local head = redis.call('LINDEX', KEYS[2], 0) or redis.call('LINDEX', KEYS[1], 0)
return {
  redis.call('LLEN', KEYS[1]),
  redis.call('LLEN', KEYS[2]),
  redis.call('ZCARD', KEYS[3]) + redis.call('ZCARD', KEYS[8]),
  redis.call('ZCARD', KEYS[4]),
  redis.call('ZCARD', KEYS[5]),
  (paused and tonumber(paused)) or -1,
  first_deadline(KEYS[3], KEYS[8]) or -1,
  first_score(KEYS[4]) or -1,
  now_ms(),
  head and string.sub(head, 1, tonumber(ARGV[1])) or '',
  total(KEYS[7], 'acked'),
  total(KEYS[7], 'purged'),
  total(KEYS[7], 'replayed'),
}
