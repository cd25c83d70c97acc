-- replay.lua: put dead letters back on the ready list with fresh deliveries.
-- KEYS[1] ackd:{q}:ready      LIST
-- KEYS[2] ackd:{q}:dead       ZSET
-- KEYS[3] ackd:{q}:deadmsgs   HASH
-- KEYS[4] ackd:{q}:counts     HASH: field replayed gains the number replayed
-- ARGV[1] limit, ARGV[2..] ids; with no ids, the oldest `limit` dead letters
-- returns {replayed, then each id not found in the dead set}
local ids = {}
for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
if #ids == 0 then
  ids = redis.call('ZRANGE', KEYS[2], 0, tonumber(ARGV[1]) - 1)
end
-- HGET runs first, then RPUSH is the first write
local denied = refused('HDEL', KEYS[3]) or refused('ZREM', KEYS[2]) or refused('HINCRBY', KEYS[4])
if denied then return denied end
local out = {0}
for i = 1, #ids do
  local rec = redis.call('HGET', KEYS[3], ids[i])
  if not rec then
    out[#out + 1] = ids[i]
  else
    local body = string.match(rec, '^%a+|%d+|(.*)$') or rec
    local m = parse_env(body)
    if not m then
      local _, inner = parse_rec(body)
      m = inner and parse_env(inner)
    end
    if m then
      m.attempts = 0
      body = build_env(m)
    end
    redis.call('RPUSH', KEYS[1], body)
    redis.call('HDEL', KEYS[3], ids[i])
    redis.call('ZREM', KEYS[2], ids[i])
    out[1] = out[1] + 1
  end
end
if out[1] > 0 then redis.call('HINCRBY', KEYS[4], 'replayed', out[1]) end
return out
