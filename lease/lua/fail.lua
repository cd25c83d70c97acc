-- fail.lua: move a held message to the dead set now, because its handler
-- said no retry can succeed (reason "failed") or panicked on its last
-- allowed delivery (reason "panic"), and keep the error's text beside it.
-- KEYS[1] ackd:{q}:leases     HASH
-- KEYS[2] ackd:{q}:deadlines  ZSET
-- KEYS[3] ackd:{q}:dead       ZSET
-- KEYS[4] ackd:{q}:deadmsgs   HASH
-- KEYS[5] ackd:{q}:deaderrs   HASH  dead-letter id -> at_ms "|" error text
-- KEYS[6] ackd:{q}:lease:<token>  shadow key
-- ARGV[1] id, ARGV[2] token, ARGV[3] reason ("failed" or "panic"),
-- ARGV[4] error text
-- returns 1 dead-lettered, 3 dead-lettered (malformed record), 0 not held,
-- -1 stale token
-- The dead record is written before the lease is removed, and every
-- command after the first write is checked first (ACL).
local rec = redis.call('HGET', KEYS[1], ARGV[1])
if not rec then return 0 end
local tok, envs = parse_rec(rec)
if tok and tok ~= ARGV[2] then return -1 end
-- the commands after the first write (dead_letter's ZADD), asked first:
-- one refused halfway would leave the message in two places, and pcall
-- below would swallow a refusal
local denied = refused('HSET', KEYS[4]) or refused('HDEL', KEYS[1]) or refused('DEL', KEYS[6]) or
  refused('ZREM', KEYS[2]) or refused('HSET', KEYS[5])
if denied then return denied end
local now = now_ms()
local m = envs and parse_env(envs)
local code, did = 1, nil
if not tok or not m or m.id ~= ARGV[1] then
  dead_letter(KEYS[3], KEYS[4], ARGV[1], 'malformed', now, rec)
  code = 3
else
  m.failures = m.failures + 1
  did = dead_letter(KEYS[3], KEYS[4], ARGV[1], ARGV[3], now, build_env(m))
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[6])
-- A deadlines or deaderrs key overwritten with another type by someone
-- else must not fail the call now that the message is dead-lettered: the
-- one holds no deadline to remove, the other loses the error's text.
redis.pcall('ZREM', KEYS[2], ARGV[1])
if did then redis.pcall('HSET', KEYS[5], did, now .. '|' .. ARGV[4]) end
return code
