-- ack.lua: end leases for good (the messages are done).
-- KEYS[1] ackd:{q}:leases     HASH
-- KEYS[2] ackd:{q}:deadlines  ZSET
-- KEYS[3] ackd:{q}:counts     HASH  field "acked" grows by the number acked
-- KEYS[3+i] ackd:{q}:lease:<token_i>  shadow key of the i-th lease
-- ARGV[2i-1] id_i, ARGV[2i] token_i
-- returns one status per lease: 1 acked, 0 not held (unknown id, or already
-- acked, requeued or dead-lettered), -1 stale token (a later delivery of the
-- message holds it now; nothing changed)
local a = #ARGV / 2
if #KEYS ~= 3 + a or a % 1 ~= 0 then
  return redis.error_reply('ERR ack: want 3+a keys and 2a arguments (see docs/PROTOCOL.md)')
end
-- HINCRBY is the first write; every shadow key is declared, so Redis has
-- checked them all, and DEL is asked about the first for all.
local denied = ack_refused(KEYS[2], KEYS[3], KEYS[4])
if denied then return denied end
local out = {0} -- sized for one status
ack_leases(KEYS[1], KEYS[2], KEYS[3], -1, 3, a, out, 0)
return out
