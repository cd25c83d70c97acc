-- deadletter.lua: move a held message to the dead set now (a poison message).
-- KEYS[1] ackd:{q}:leases     HASH
-- KEYS[2] ackd:{q}:deadlines  ZSET
-- KEYS[3] ackd:{q}:dead       ZSET
-- KEYS[4] ackd:{q}:deadmsgs   HASH
-- KEYS[5] ackd:{q}:lease:<token>  shadow key
-- ARGV[1] id, ARGV[2] token
-- returns 1 dead-lettered (killed), 3 dead-lettered (malformed record),
-- 0 not held, -1 stale token
local denied = release_refused(KEYS[1], KEYS[2], KEYS[5], KEYS[3], KEYS[4])
if denied then return denied end
local now = now_ms()
return release(KEYS[1], KEYS[2], KEYS[5], KEYS[3], KEYS[4], ARGV[1], ARGV[2], now, function(m)
  dead_letter(KEYS[3], KEYS[4], ARGV[1], 'killed', now, build_env(m))
  return 1
end)
