-- take.lua: ack up to a leases, then lease up to n messages of one queue.
-- KEYS[1] ackd:{q}:ready      LIST  envelopes or raw payloads, taken from the left
-- KEYS[2] ackd:{q}:claim      LIST  elements a blocked consumer moved off ready (BLMOVE); taken first
-- KEYS[3] ackd:{q}:held       HASH  token -> lease record
-- KEYS[4] ackd:{q}:due        ZSET  token scored by lease deadline (ms)
-- KEYS[5] ackd:{q}:delayed    ZSET  envelope scored by due time (ms)
-- KEYS[6] ackd:{q}:dead       ZSET  id scored by time dead-lettered (ms)
-- KEYS[7] ackd:{q}:deadmsgs   HASH  id -> dead record
-- KEYS[8] ackd:{q}:paused     STRING  exists while the queue is paused
-- KEYS[9] ackd:{q}:counts     HASH  field "acked" grows by the number acked
-- KEYS[9+i] ackd:{q}:lease:<token_i>  shadow key of the i-th new lease (i = 1..n)
-- KEYS[9+n+j] ackd:{q}:lease:<ack token_j>  shadow key of the j-th lease to ack (j = 1..a)
-- ARGV[1] n (0..1000)
-- ARGV[2] lease ms for this take, 0 to use the message's own or the default
-- ARGV[3] default lease ms (messages that carry none, raw payloads)
-- ARGV[4] default max deliveries for raw payloads (0 = unlimited), digits only
-- ARGV[5] wake channel
-- ARGV[6] queue name
-- ARGV[7] max payload bytes: a larger element is dead-lettered as
--         oversized, before it is parsed or copied
-- ARGV[8] a, the number of leases to ack first (0..1000)
-- ARGV[9] 1 to report how many remain on the ready list when all n slots
--         were filled, else 0
-- ARGV[8+2i] token_i, ARGV[9+2i] id_i (the id a raw payload in slot i gets)
-- ARGV[9+2n+j] the j-th lease to ack: its token, or token "|" id
-- Leases fill slots 1..count in order: the i-th lease returned is token_i's.
-- A resent call (same tokens) returns what the first run leased.
-- A paused queue leases nothing and moves nothing (acks still happen):
-- next_delayed_ms is then -2.
-- returns {count, next_delayed_ms or -1 or -2, malformed or oversized,
--          remaining (ARGV[9] = 1 and count = n: the ready list's length; else 0),
--          then a ack statuses (1 acked, 0 not held, -1 another message),
--          then per lease: deadline_ms, record}
-- The lease record is the envelope as it was taken (attempts not counting
-- this delivery): an envelope popped is stored and returned as it is, a
-- raw payload as the envelope MARK id_i "|0|" ARGV[4] "|0|0|0|" payload.
-- KEYS and ARGV are globals: a local copy of each saves a table lookup at
-- each of the thirty-odd uses of a run.
local KEYS, ARGV = KEYS, ARGV
-- Every number printed into a string or passed to redis.call costs about
-- as much as a cheap command (Lua prints it with "%.17g"), and so does
-- every tonumber: the common values are compared as strings, numbers go to
-- Redis as strings, and a deadline is printed once, as an integer.
local n = ARGV[1] == '1' and 1 or tonumber(ARGV[1])
local override = ARGV[2] == '0' and 0 or tonumber(ARGV[2])
local deflease = tonumber(ARGV[3])
-- copied into raw payloads' records as it is: a canonical decimal of at
-- most 14 digits (see num in lib.lua)
local dm = ARGV[4]
local dmok = #dm <= 14 and (dm == '0' or string.find(dm, '^[1-9]%d*$'))
local maxp = tonumber(ARGV[7])
local a = ARGV[8] == '0' and 0 or tonumber(ARGV[8])
-- (x >= 0 is false for NaN too, which strtod reads from "nan")
if not (n and a and dmok and maxp and maxp >= 0 and override and override >= 0 and deflease and
    deflease >= 0 and #KEYS == 9 + n + a and #ARGV == 9 + 2 * n + a) then
  return redis.error_reply('ERR take: want 9+n+a keys and 9+2n+a arguments, ARGV[2], ARGV[3] and ARGV[7] numbers >= 0, ARGV[4] a canonical decimal (see docs/PROTOCOL.md)')
end
-- The reply: the header, then the acks' statuses and the leases. The nils
-- size the table for one ack and one lease at once: each time a table
-- outgrows its size Lua allocates and rehashes it.
local out = {0, -1, 0, 0, nil, nil, nil}

-- Reads first: nothing below needs asking about before the first write.
-- One EXISTS answers the common case: no resent call, not paused, nothing
-- delayed.
local resent, paused, delayed = false, false, false
if n > 0 then
  local e = redis.call('EXISTS', KEYS[10], KEYS[8], KEYS[5])
  if e > 0 then
    local e2 = redis.call('EXISTS', KEYS[10], KEYS[8])
    delayed = e > e2
    if e2 > 0 then
      -- A client that lost the reply resends the same call (go-redis
      -- retries by default), with the same tokens. Its first slot's shadow
      -- key then exists (tokens are random: nothing else creates it), so
      -- answer with what the first run leased: take is idempotent.
      resent = redis.call('EXISTS', KEYS[10]) == 1
      paused = not resent
    end
  end
end
local take = n > 0 and not resent and not paused
local before, now
if take then
  -- the earliest deadline, for the wake below (a foreign -inf or +inf
  -- compares as first_score's clamped value would)
  local first = redis.call('ZRANGE', KEYS[4], '0', '0', 'WITHSCORES')
  before = first[2] and tonumber(first[2])
  now = now_ms()
end

-- Redis has checked every declared key before the script ran, so each
-- command is asked about once, for any key. The acks' first HDEL is the
-- first write; without acks, promote's RPUSH or LMPOP is. LPUSH puts back
-- what was popped and not placed. (HGET and ZRANGE run before any write.)
local denied = (a > 0 and ack_refused(KEYS[3], KEYS[4], KEYS[9], KEYS[10 + n], a)) or
  (take and (refused_any('HSETNX', KEYS[3], 'SET', KEYS[10], 'ZADD', KEYS[4], 'PUBLISH', ARGV[5],
      'HEXISTS', KEYS[7], 'HLEN', KEYS[7], 'HSET', KEYS[7], 'LPUSH', KEYS[1]) or
    (ARGV[9] == '1' and refused('LLEN', KEYS[1])) or
    ((a > 0 or delayed) and refused('LMPOP', '1', KEYS[1], 'LEFT')) or
    (delayed and (refused('ZREM', KEYS[5]) or
      (a > 0 and (refused('RPUSH', KEYS[1]) or refused('ZRANGEBYSCORE', KEYS[5]))))))) or
  (resent and a > 0 and refused_any('HGET', KEYS[3], 'ZSCORE', KEYS[4]))
if denied then return denied end

if a > 0 then ack_leases(KEYS[3], KEYS[4], KEYS[9], 9 + 2 * n, 9 + n, a, out, 4) end
-- o is the last slot of out used: leases go after the header and the acks
local o = 4 + a

if resent then
  -- the leases of slots 1, 2, ... as long as their tokens hold one
  local j = 0
  for i = 1, n do
    local token = ARGV[8 + 2 * i]
    local rec = redis.call('HGET', KEYS[3], token)
    local dl = rec and redis.call('ZSCORE', KEYS[4], token)
    if not dl then break end
    j = j + 1
    out[o + 1], out[o + 2] = tonumber(dl), rec
    o = o + 2
  end
  out[1] = j
  return out
end
if paused then
  out[2] = -2
  return out
end
if not take then return out end

-- Only when something is delayed: move up to 100 due ones to ready.
if delayed then promote(KEYS[5], KEYS[1], now, 100) end

-- earliest is the earliest new deadline, es the same printed
local earliest, es = nil, nil
-- ZADD's arguments for the leases made: score, token of the first, then
-- of the others in zadd (a table only for a second lease)
local z1, z1tok, zadd = nil, nil, nil
local j, bad = 0, 0
local dry = false
-- failed is the error that stops the run, from: the list it popped from,
-- elems what it popped, fx the first element of elems not placed
local failed, from, elems, fx = nil, nil, nil, nil
while j < n and bad < 100 and not dry do
  -- the claim list first, then ready: one call for up to n - j elements.
  -- Fewer than asked from ready means both lists are empty now: no
  -- further call needed to find that out.
  local popped = redis.pcall('LMPOP', '2', KEYS[2], KEYS[1], 'LEFT', 'COUNT', j == 0 and ARGV[1] or n - j)
  if not popped then break end
  -- a list of the wrong type (someone else's write) after leases were
  -- made: they get their deadlines, then the call fails
  if popped.err then
    failed = popped
    break
  end
  from, elems = popped[1], popped[2]
  dry = from == KEYS[1] and #elems < n - j
  for x = 1, #elems do
    local e = elems[x]
    local token, rawid = ARGV[8 + 2 * (j + 1)], ARGV[9 + 2 * (j + 1)]
    local id, lms, rec
    local env = string.sub(e, 1, MARKLEN) == MARK
    -- Size first: an element far over the limit is never parsed or copied
    -- but into its dead record.
    local over = #e > maxp and (not env or #e > maxp + ENV_HEAD)
    if env and not over then
      local pp
      id, lms, pp = take_env(e)
      if id then
        over = #e - pp + 1 > maxp
        -- the record is the element itself: Lua hashes every byte of
        -- every string it makes, and makes none here
        rec = e
      end
    elseif not env and not over then
      id = rawid
      rec = MARK .. rawid .. '|0|' .. ARGV[4] .. '|0|0|0|' .. e
    end
    -- a message that cannot be leased goes to the dead set under did
    local set, did, reason = nil, nil, nil
    if over then
      bad = bad + 1
      did = env and string.match(string.sub(e, MARKLEN + 1, MARKLEN + 65), '^([%w%-%.]+)|')
      did, reason = did or rawid .. '.o' .. bad, 'oversized'
    elseif not id then
      bad = bad + 1
      did, reason = rawid .. '.m' .. bad, 'malformed'
    else
      set = redis.pcall('HSETNX', KEYS[3], token, rec)
      if type(set) == 'table' then failed = set end
    end
    if reason then
      local ok, err = pcall(dead_letter, KEYS[6], KEYS[7], did, reason, now, e)
      if not ok then failed = err end
    end
    -- HSETNX 0: the token holds a lease already, made by a first run of
    -- this call (resent) whose first lease has ended since. The element
    -- goes back with the rest, and the call returns what it leased.
    if failed or set == 0 then
      fx = x
      break
    end
    if set == 1 then
      j = j + 1
      local ms = override
      if ms <= 0 and lms and lms ~= '0' then ms = lms + 0 end
      if ms <= 0 then ms = deflease end
      -- a foreign envelope may ask for more than ackd allows: a week at most
      if ms > MAX_MS then ms = MAX_MS end
      local deadline = now + ms
      local ds = string.format('%d', deadline)
      if not z1 then
        z1, z1tok = ds, token
      elseif zadd then
        zadd[#zadd + 1] = ds
        zadd[#zadd + 1] = token
      else
        zadd = {z1, z1tok, ds, token}
      end
      -- the shadow key holds 1, an integer Redis shares: no allocation
      redis.call('SET', KEYS[9 + j], '1', 'PXAT', ds)
      if earliest == nil or deadline < earliest then earliest, es = deadline, ds end
      out[o + 1], out[o + 2] = deadline, rec
      o = o + 2
    end
  end
  if fx then break end
end
-- A queue key of the wrong type (written by something else) fails the
-- first call on it, which may come after LMPOP: the popped elements not
-- placed yet (elems[fx..]) go back at the head of their list, in order,
-- the leases made get their deadlines, and the call fails. (HSETNX and
-- dead_letter write nothing when they fail so.) After HSETNX 0 the same,
-- without the failure.
if fx then
  for y = #elems, fx, -1 do redis.call('LPUSH', from, elems[y]) end
end
if zadd then
  redis.call('ZADD', KEYS[4], unpack(zadd))
elseif z1 then
  redis.call('ZADD', KEYS[4], z1, z1tok)
end
if failed then return redis.error_reply(type(failed) == 'table' and failed.err or tostring(failed)) end
out[1] = j
out[3] = bad
if earliest then
  -- tell ackd daemons, on the wake channel, of a new earliest deadline:
  -- only when it is earlier than the earliest already in the set, so
  -- steady traffic publishes nothing
  if before == nil or earliest < before then
    redis.call('PUBLISH', ARGV[5], 'lease|' .. es .. '|' .. ARGV[6])
  end
elseif j == 0 then
  out[2] = delayed and first_score(KEYS[5]) or -1
end
if j == n and ARGV[9] == '1' then out[4] = redis.call('LLEN', KEYS[1]) end
return out
