-- nack.lua: give a lease back because processing failed.
-- KEYS[1] ackd:{q}:ready      LIST
-- KEYS[2] ackd:{q}:held       HASH
-- KEYS[3] ackd:{q}:due        ZSET
-- KEYS[4] ackd:{q}:delayed    ZSET
-- KEYS[5] ackd:{q}:dead       ZSET
-- KEYS[6] ackd:{q}:deadmsgs   HASH
-- KEYS[7] ackd:{q}:lease:<token>  shadow key
-- ARGV[1] token, or token "|" id to check the id too,
-- ARGV[2] delay ms (0 = ready now, at the tail), ARGV[3] wake channel,
-- ARGV[4] queue
-- returns 1 requeued, 2 dead-lettered (failed: no deliveries left),
-- 3 dead-lettered (malformed record), 0 not held, -1 the token holds a
-- lease of another message
local denied = release_refused(KEYS[2], KEYS[3], KEYS[7], KEYS[5], KEYS[6]) or refused('ZRANGE', KEYS[4]) or
  refused('ZADD', KEYS[4]) or refused('PUBLISH', ARGV[3]) or refused('RPUSH', KEYS[1])
if denied then return denied end
local now = now_ms()
local delay = tonumber(ARGV[2])
-- the message's new place, written before its lease is removed
local function put(m)
  m.failures = m.failures + 1
  if m.max > 0 and m.attempts >= m.max then
    dead_letter(KEYS[5], KEYS[6], m.id, 'failed', now, build_env(m))
    return 2
  end
  if delay > 0 then
    local before = first_score(KEYS[4])
    redis.call('ZADD', KEYS[4], now + delay, build_env(m))
    wake(ARGV[3], ARGV[4], 'delayed', before, now + delay)
  else
    redis.call('RPUSH', KEYS[1], build_env(m))
  end
  return 1
end
local token, id = lease_arg(ARGV[1])
return release(KEYS[2], KEYS[3], KEYS[7], KEYS[5], KEYS[6], token, id, now, put)
