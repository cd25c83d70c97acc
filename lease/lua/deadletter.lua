-- deadletter.lua: move a held message to the dead set now (a poison message).
-- KEYS[1] ackd:{q}:held       HASH
-- KEYS[2] ackd:{q}:due        ZSET
-- KEYS[3] ackd:{q}:dead       ZSET
-- KEYS[4] ackd:{q}:deadmsgs   HASH
-- KEYS[5] ackd:{q}:lease:<token>  shadow key
-- ARGV[1] token, or token "|" id to check the id too
-- returns 1 dead-lettered (killed), 3 dead-lettered (malformed record),
-- 0 not held, -1 the token holds a lease of another message
local denied = release_refused(KEYS[1], KEYS[2], KEYS[5], KEYS[3], KEYS[4])
if denied then return denied end
local now = now_ms()
local token, id = lease_arg(ARGV[1])
return release(KEYS[1], KEYS[2], KEYS[5], KEYS[3], KEYS[4], token, id, now, function(m)
  dead_letter(KEYS[3], KEYS[4], m.id, 'killed', now, build_env(m))
  return 1
end)
