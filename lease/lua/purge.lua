-- purge.lua: delete dead letters for good.
-- KEYS[1] ackd:{q}:dead       ZSET
-- KEYS[2] ackd:{q}:deadmsgs   HASH
-- KEYS[3] ackd:{q}:counts     HASH: field purged gains the number deleted
-- ARGV[1] limit, ARGV[2..] ids; with no ids, the oldest `limit` dead letters
-- returns {deleted, then each id not found in the dead set}
local ids = {}
for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
local out = {0}
if #ids == 0 then
  ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
else
  local scores = redis.call('ZMSCORE', KEYS[1], unpack(ids))
  for i = 1, #ids do
    if not scores[i] then out[#out + 1] = ids[i] end
  end
end
if #ids == 0 then return out end
local denied = refused('ZREM', KEYS[1]) or refused('HINCRBY', KEYS[3]) -- HDEL is the first write
if denied then return denied end
out[1] = redis.call('HDEL', KEYS[2], unpack(ids))
redis.call('ZREM', KEYS[1], unpack(ids))
if out[1] > 0 then redis.call('HINCRBY', KEYS[3], 'purged', out[1]) end
return out
