-- ack.lua: end leases for good (the messages are done).
-- KEYS[1] ackd:{q}:held       HASH  token -> lease record
-- KEYS[2] ackd:{q}:due        ZSET  token scored by lease deadline (ms)
-- KEYS[3] ackd:{q}:counts     HASH  field "acked" grows by the number acked
-- KEYS[3+i] ackd:{q}:lease:<token_i>  shadow key of the i-th lease
-- ARGV[i] the i-th lease: its token, or token "|" id to have its message
--         checked too
-- returns one status per lease: 1 acked, 0 not held (the token holds no
-- lease: acked, requeued, dead-lettered, released, or never), -1 the token
-- holds a lease of another message (only with an id; nothing changed)
local a = #ARGV
if #KEYS ~= 3 + a then
  return redis.error_reply('ERR ack: want 3+a keys and a arguments (see docs/PROTOCOL.md)')
end
-- The first HDEL is the first write; every shadow key is declared, so Redis
-- has checked them all, and DEL is asked about the first for all.
local denied = ack_refused(KEYS[1], KEYS[2], KEYS[3], KEYS[4], a)
if denied then return denied end
local out = {0} -- sized for one status
ack_leases(KEYS[1], KEYS[2], KEYS[3], 0, 3, a, out, 0)
return out
