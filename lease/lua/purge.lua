-- purge.lua: delete dead letters for good.
-- KEYS[1] ackd:{q}:dead       ZSET
-- KEYS[2] ackd:{q}:deadmsgs   HASH
-- ARGV[1] limit, ARGV[2..] ids; with no ids, the oldest `limit` dead letters
-- returns how many were deleted
local ids = {}
for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
if #ids == 0 then
  ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
end
if #ids == 0 then return 0 end
local denied = refused({{'HDEL', KEYS[2]}, {'ZREM', KEYS[1]}})
if denied then return denied end
local n = redis.call('HDEL', KEYS[2], unpack(ids))
redis.call('ZREM', KEYS[1], unpack(ids))
return n
