-- ack.lua: end leases for good (the messages are done).
-- KEYS[1] ackd:{q}:leases     HASH
-- KEYS[2] ackd:{q}:deadlines  ZSET
-- KEYS[2+i] ackd:{q}:lease:<token_i>  shadow key of the i-th lease
-- ARGV[2i-1] id_i, ARGV[2i] token_i
-- returns one status per lease: 1 acked, 0 not held (unknown id, or already
-- acked, requeued or dead-lettered), -1 stale token (a later delivery of the
-- message holds it now; nothing changed)
local out = {}
for i = 1, #ARGV / 2 do
  local id, token = ARGV[2 * i - 1], ARGV[2 * i]
  local rec = redis.call('HGET', KEYS[1], id)
  if not rec then
    out[i] = 0
  elseif string.sub(rec, 1, #token + 1) ~= token .. '|' then
    out[i] = -1
  else
    redis.call('HDEL', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    redis.call('DEL', KEYS[2 + i])
    out[i] = 1
  end
end
return out
