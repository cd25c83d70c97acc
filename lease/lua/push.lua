-- push.lua: add messages that become visible later (delayed push).
-- Immediate pushes need no script: they are one RPUSH of envelopes onto
-- ackd:{q}:ready (see docs/PROTOCOL.md).
-- KEYS[1] ackd:{q}:delayed    ZSET  envelope scored by due time (ms)
-- ARGV[1] delay ms (> 0), ARGV[2] wake channel, ARGV[3] queue,
-- ARGV[4..] envelopes
-- returns the due time in ms
local denied = refused('PUBLISH', ARGV[2]) -- ZADD is the first write
if denied then return denied end
local before = first_score(KEYS[1])
local due = now_ms() + tonumber(ARGV[1])
for i = 4, #ARGV do
  redis.call('ZADD', KEYS[1], due, ARGV[i])
end
wake(ARGV[2], ARGV[3], 'delayed', before, due)
return due
