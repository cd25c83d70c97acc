-- extend.lua: move a lease's deadline to now + ms (heartbeat).
-- KEYS[1] ackd:{q}:leases     HASH
-- KEYS[2] ackd:{q}:deadlines  ZSET
-- KEYS[3] ackd:{q}:lease:<token>  shadow key
-- ARGV[1] id, ARGV[2] token, ARGV[3] ms, ARGV[4] wake channel, ARGV[5] queue
-- returns the new deadline in ms, 0 not held, -1 stale token.
-- A lease whose deadline has passed but that nobody has requeued yet is
-- still held, and can be extended.
local rec = redis.call('HGET', KEYS[1], ARGV[1])
if not rec then return 0 end
if string.sub(rec, 1, #ARGV[2] + 1) ~= ARGV[2] .. '|' then return -1 end
local denied = refused('SET', KEYS[3]) or refused('PUBLISH', ARGV[4]) -- ZADD is the first write
if denied then return denied end
local before = first_score(KEYS[2])
local deadline = now_ms() + tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], deadline, ARGV[1])
redis.call('SET', KEYS[3], ARGV[1], 'PXAT', deadline)
wake(ARGV[4], ARGV[5], 'lease', before, deadline)
return deadline
