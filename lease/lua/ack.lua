-- ack.lua: end leases for good (the messages are done).
-- KEYS[1] ackd:{q}:leases     HASH
-- KEYS[2] ackd:{q}:deadlines  ZSET
-- KEYS[2+i] ackd:{q}:lease:<token_i>  shadow key of the i-th lease
-- KEYS[#KEYS] ackd:{q}:counts  HASH: field acked gains the number acked
-- ARGV[2i-1] id_i, ARGV[2i] token_i
-- returns one status per lease: 1 acked, 0 not held (unknown id, or already
-- acked, requeued or dead-lettered), -1 stale token (a later delivery of the
-- message holds it now; nothing changed)
local n = #ARGV / 2
local ids = {}
for i = 1, n do ids[i] = ARGV[2 * i - 1] end
local recs = redis.call('HMGET', KEYS[1], unpack(ids))
local out, done, shadows = {}, {}, {}
for i = 1, n do
  local token, rec = ARGV[2 * i], recs[i]
  if not rec then
    out[i] = 0
  elseif string.sub(rec, 1, #token + 1) ~= token .. '|' then
    out[i] = -1
  else
    done[#done + 1] = ids[i]
    shadows[#shadows + 1] = KEYS[2 + i]
    out[i] = 1
  end
end
if #done > 0 then
  -- HDEL is the first write; every shadow key is declared, so Redis has
  -- checked them all, and DEL is asked about the first for all.
  local denied = refused('ZREM', KEYS[2]) or refused('DEL', shadows[1]) or refused('HINCRBY', KEYS[#KEYS])
  if denied then return denied end
  redis.call('HDEL', KEYS[1], unpack(done))
  redis.call('ZREM', KEYS[2], unpack(done))
  redis.call('DEL', unpack(shadows))
  redis.call('HINCRBY', KEYS[#KEYS], 'acked', #done)
end
return out
