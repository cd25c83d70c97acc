-- take.lua: lease up to n messages of one queue.
-- KEYS[1] ackd:{q}:ready      LIST  envelopes or raw payloads, taken from the left
-- KEYS[2] ackd:{q}:claim      LIST  elements a blocked consumer moved off ready (BLMOVE); taken first
-- KEYS[3] ackd:{q}:leases     HASH  id -> lease record
-- KEYS[4] ackd:{q}:deadlines  ZSET  id scored by lease deadline (ms)
-- KEYS[5] ackd:{q}:delayed    ZSET  envelope scored by due time (ms)
-- KEYS[6] ackd:{q}:dead       ZSET  id scored by time dead-lettered (ms)
-- KEYS[7] ackd:{q}:deadmsgs   HASH  id -> dead record
-- KEYS[7+i] ackd:{q}:lease:<token_i>  shadow key of the i-th lease (i = 1..n)
-- KEYS[8+n] ackd:{q}:paused     STRING  exists while the queue is paused
-- ARGV[1] n
-- ARGV[2] lease ms for this take, 0 to use the message's own or the default
-- ARGV[3] default lease ms (messages that carry none, raw payloads)
-- ARGV[4] default max deliveries for raw payloads (0 = unlimited)
-- ARGV[5] wake channel
-- ARGV[6] queue name
-- ARGV[5+2i] token_i, ARGV[6+2i] id_i (the id a raw payload in slot i gets)
-- ARGV[7+2n] max payload bytes: a larger element is dead-lettered as
--            oversized, before it is parsed or copied (absent: no limit)
-- A resent call (same tokens) returns what the first run leased.
-- A paused queue leases nothing and moves nothing: returns {0, -2, 0}.
-- returns {count, next_delayed_ms or -1, malformed or oversized,
--          then per lease: id, token, attempt, deadline_ms, max, payload}
local n = tonumber(ARGV[1])
local override = tonumber(ARGV[2])
local deflease = tonumber(ARGV[3])
local defmax = tonumber(ARGV[4])
local maxp = tonumber(ARGV[7 + 2 * n]) or math.huge
local out = {0, -1, 0}

-- A client that lost the reply resends the same call (go-redis retries by
-- default), with the same tokens. Its first slot's shadow key then exists
-- (tokens are random: nothing else creates it), so answer with what the
-- first run leased instead of leasing more: take is idempotent.
if redis.call('EXISTS', KEYS[8]) == 1 then
  local j = 0
  for i = 1, n do
    local id = redis.call('GET', KEYS[7 + i])
    if not id then break end
    local rec = redis.call('HGET', KEYS[3], id)
    local dl = redis.call('ZSCORE', KEYS[4], id)
    local tok, envs = nil, nil
    if rec then tok, envs = parse_rec(rec) end
    local m = envs and parse_env(envs)
    if m and dl and tok == ARGV[5 + 2 * i] then
      j = j + 1
      local o = #out
      out[o + 1] = m.id
      out[o + 2] = tok
      out[o + 3] = m.attempts
      out[o + 4] = tonumber(dl)
      out[o + 5] = m.max
      out[o + 6] = m.payload
    end
  end
  out[1] = j
  return out
end

if not KEYS[8 + n] then return redis.error_reply('ERR take: KEYS[8+n] must be ackd:{q}:paused') end
if redis.call('EXISTS', KEYS[8 + n]) == 1 then
  out[2] = -2
  return out
end

local before = first_score(KEYS[4])
-- Redis has checked every declared key, so each command is asked about
-- once. Promote (RPUSH, then ZREM) is complete for every message it moves:
-- a refused LMPOP after it changes nothing more, so LMPOP is not asked.
local denied = refused('ZREM', KEYS[5]) or refused('ZRANGE', KEYS[5]) or
  refused('HSETNX', KEYS[3]) or refused('ZADD', KEYS[4]) or refused('SET', KEYS[8]) or
  refused('PUBLISH', ARGV[5]) or refused('HEXISTS', KEYS[7]) or refused('HLEN', KEYS[7]) or
  refused('HSET', KEYS[7])
if denied then return denied end

local now = now_ms()
promote(KEYS[5], KEYS[1], now, 100)

local earliest = nil
local zadd = {}
local j, bad = 0, 0
while j < n and bad < 100 do
  -- the claim list first, then ready: one call for up to n - j elements
  local popped = redis.call('LMPOP', 2, KEYS[2], KEYS[1], 'LEFT', 'COUNT', n - j)
  if not popped then break end
  local elems = popped[2]
  for x = 1, #elems do
    local e = elems[x]
    local token, rawid = ARGV[5 + 2 * (j + 1)], ARGV[6 + 2 * (j + 1)]
    local m
    local env = string.sub(e, 1, MARKLEN) == MARK
    -- Size first: an element far over the limit is never parsed or copied
    -- but into its dead record.
    local over = #e > maxp and (not env or #e > maxp + ENV_HEAD)
    if env and not over then
      m = parse_env(e)
      over = m and #m.payload > maxp
    elseif not env and not over then
      m = { id = rawid, attempts = 0, max = defmax, lease = 0, expiries = 0, failures = 0, payload = e }
    end
    if over then
      bad = bad + 1
      local id = env and string.match(string.sub(e, MARKLEN + 1, MARKLEN + 65), '^([%w%-%.]+)|')
      dead_letter(KEYS[6], KEYS[7], id or rawid .. '.o' .. bad, 'oversized', now, e)
    elseif not m then
      bad = bad + 1
      dead_letter(KEYS[6], KEYS[7], rawid .. '.m' .. bad, 'malformed', now, e)
    else
      m.attempts = m.attempts + 1
      local rec = build_env(m, token .. '|')
      if redis.call('HSETNX', KEYS[3], m.id, rec) == 0 then
        -- an id already in flight: a second copy pushed by someone else
        bad = bad + 1
        dead_letter(KEYS[6], KEYS[7], m.id, 'malformed', now, e)
      else
        j = j + 1
        local ms = override
        if ms <= 0 then ms = m.lease end
        if ms <= 0 then ms = deflease end
        -- a foreign envelope may ask for more than ackd allows: a week at most
        if ms > 604800000 then ms = 604800000 end
        local deadline = now + ms
        zadd[#zadd + 1] = deadline
        zadd[#zadd + 1] = m.id
        redis.call('SET', KEYS[7 + j], m.id, 'PXAT', deadline)
        if earliest == nil or deadline < earliest then earliest = deadline end
        local o = #out
        out[o + 1] = m.id
        out[o + 2] = token
        out[o + 3] = m.attempts
        out[o + 4] = deadline
        out[o + 5] = m.max
        out[o + 6] = m.payload
      end
    end
  end
end
if #zadd > 0 then redis.call('ZADD', KEYS[4], unpack(zadd)) end
out[1] = j
out[3] = bad
if earliest then
  wake(ARGV[5], ARGV[6], 'lease', before, earliest)
elseif j == 0 then
  out[2] = first_score(KEYS[5]) or -1
end
return out
