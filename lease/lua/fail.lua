-- fail.lua: move a held message to the dead set now, because its handler
-- said no retry can succeed (reason "failed") or panicked on its last
-- allowed delivery (reason "panic"), and keep the error's text beside it.
-- KEYS[1] ackd:{q}:held       HASH
-- KEYS[2] ackd:{q}:due        ZSET
-- KEYS[3] ackd:{q}:dead       ZSET
-- KEYS[4] ackd:{q}:deadmsgs   HASH
-- KEYS[5] ackd:{q}:deaderrs   HASH  dead-letter id -> at_ms "|" error text
-- KEYS[6] ackd:{q}:lease:<token>  shadow key
-- ARGV[1] token, or token "|" id to check the id too,
-- ARGV[2] reason ("failed" or "panic"), ARGV[3] error text
-- returns 1 dead-lettered, 3 dead-lettered (malformed record), 0 not held,
-- -1 the token holds a lease of another message
-- The dead record is written before the lease is removed, and every
-- command after the first write is checked first (ACL).
local denied = release_refused(KEYS[1], KEYS[2], KEYS[6], KEYS[3], KEYS[4]) or refused('HSET', KEYS[5])
if denied then return denied end
local now = now_ms()
local token, id = lease_arg(ARGV[1])
local did = nil
local code = release(KEYS[1], KEYS[2], KEYS[6], KEYS[3], KEYS[4], token, id, now, function(m)
  m.failures = m.failures + 1
  did = dead_letter(KEYS[3], KEYS[4], m.id, ARGV[2], now, build_env(m))
  return 1
end)
-- A deaderrs key overwritten with another type by someone else must not
-- fail the call now that the message is dead-lettered: it loses the
-- error's text.
if did then redis.pcall('HSET', KEYS[5], did, now .. '|' .. ARGV[3]) end
return code
