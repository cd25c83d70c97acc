-- extend.lua: move a lease's deadline to now + ms (heartbeat).
-- KEYS[1] ackd:{q}:held       HASH  token -> lease record
-- KEYS[2] ackd:{q}:due        ZSET  token scored by lease deadline (ms)
-- KEYS[3] ackd:{q}:lease:<token>  shadow key
-- ARGV[1] the lease: its token, or token "|" id to have its message checked
-- too; ARGV[2] ms, ARGV[3] wake channel, ARGV[4] queue
-- returns the new deadline in ms, 0 not held, -1 the token holds a lease of
-- another message (only with an id; nothing changed).
-- A lease whose deadline has passed but that nobody has requeued yet is
-- still held, and can be extended.
local token, id = lease_arg(ARGV[1])
if id then
  local rec = redis.call('HGET', KEYS[1], token)
  if not rec then return 0 end
  if other_message(rec, id) then return -1 end
elseif redis.call('HEXISTS', KEYS[1], token) == 0 then
  return 0
end
local denied = refused_any('SET', KEYS[3], 'PUBLISH', ARGV[3]) -- ZADD is the first write
if denied then return denied end
local before = first_score(KEYS[2])
local deadline = now_ms() + tonumber(ARGV[2])
-- printed once, for both
local ds = string.format('%d', deadline)
redis.call('ZADD', KEYS[2], ds, token)
redis.call('SET', KEYS[3], '1', 'PXAT', ds)
wake(ARGV[3], ARGV[4], 'lease', before, deadline)
return deadline
