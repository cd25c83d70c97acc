-- requeue.lua: requeue one lease if, and only if, its deadline has passed.
-- Idempotent: the deadlines ZSET decides, so any number of callers racing on
-- one lease requeue it once; an acked or extended lease is left alone.
-- KEYS[1] ackd:{q}:ready      LIST
-- KEYS[2] ackd:{q}:leases     HASH
-- KEYS[3] ackd:{q}:deadlines  ZSET
-- KEYS[4] ackd:{q}:dead       ZSET
-- KEYS[5] ackd:{q}:deadmsgs   HASH
-- ARGV[1] id
-- returns {status, lag_ms}: status 1 requeued, 2 dead-lettered (expired),
-- 3 dead-lettered (malformed), 0 not in flight, -1 not due yet (lag_ms is
-- then minus the time left); lag_ms is how long after its deadline it ran.
local score = redis.call('ZSCORE', KEYS[3], ARGV[1])
if not score then return {0, 0} end
score = tonumber(score)
local now = now_ms()
-- A lease is due once its deadline millisecond is over: Redis itself deletes
-- the shadow key only when now > deadline.
if score >= now then return {-1, math.min(score - now, MAX_MS)} end
local denied = expire_refused(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
if denied then return denied end
return {expire_one(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], now), math.min(now - score, now)}
