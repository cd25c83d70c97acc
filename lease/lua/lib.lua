-- lib.lua: helpers shared by ackd's scripts. Each script is loaded with
-- this header and the definitions below that it uses, in this order, then
-- "\n" .. <script>.lua (lease/scripts.go, docs/PROTOCOL.md). So every
-- top-level statement here is a definition at column 0, `local function
-- name(` or `local name =`, with its comment lines right above it.
--
-- Formats (all fields are decimal integers unless said otherwise):
--   envelope      "\255ackd1|" id "|" attempts "|" max "|" lease_ms "|" expiries "|" failures "|" payload
--   lease record  the envelope as it stood on the ready list  (HASH held, field token):
--                 its attempts do not count the delivery (delivery = attempts + 1)
--   format 1      token "|" envelope, attempts counting the delivery (HASH
--                 leases, field id): only read, by sweep, stats and peek
--   dead record   reason "|" at_ms "|" body                (HASH deadmsgs, field id)
-- Anything on the ready list that does not start with "\255ackd1|" is a raw
-- payload pushed by a plain producer.

local MARK = "\255ackd1|"
local MARKLEN = #MARK
-- ENV_HEAD bounds an envelope's header: mark, an id of up to 64 bytes, five
-- numbers of up to 14 digits and the six separators.
local ENV_HEAD = MARKLEN + 64 + 5 * 14 + 6
-- MAX_MS is the longest lease or delay ackd writes: a week.
local MAX_MS = 604800000

local function now_ms()
  local t = redis.call('TIME')
  -- arithmetic on the reply's strings converts them without a library
  -- call (tonumber, math.floor each cost about as much as a cheap command)
  local us = t[2] + 0
  return t[1] * 1000 + (us - us % 1000) / 1000
end

-- num converts a canonical decimal (no sign, no leading zero) of at most 14
-- digits, nil otherwise: Lua prints larger numbers in exponent form, so
-- build_env could not write them back.
local function num(s)
  if #s > 14 or (#s > 1 and string.byte(s, 1) == 48) then return nil end
  return tonumber(s)
end

-- parse_env returns a table for a well-formed envelope, nil otherwise.
local function parse_env(s)
  if string.sub(s, 1, MARKLEN) ~= MARK then return nil end
  local id, a, m, l, e, f, pos = string.match(s,
    '^([%w%-%.]+)|(%d+)|(%d+)|(%d+)|(%d+)|(%d+)|()', MARKLEN + 1)
  if not id or #id > 64 then return nil end
  a, m, l, e, f = num(a), num(m), num(l), num(e), num(f)
  if not (a and m and l and e and f) then return nil end
  return { id = id, attempts = a, max = m, lease = l,
           expiries = e, failures = f, payload = string.sub(s, pos) }
end

-- take_env checks an envelope for take, and finds the id of a lease record
-- for release and peek (the caller has checked its mark),
-- accepting exactly what parse_env accepts, for a fraction of the cost:
-- every library call and every number converted or printed costs about as
-- much as a cheap Redis command. Returns the id, lease_ms as a string and
-- the position of the payload; nil when malformed. The element itself is
-- the lease record: nothing of it is copied or printed again.
local function take_env(s)
  local id, a, m, l, e, f, pp = string.match(s,
    '^([%w%-%.]+)|(%d+)|(%d+)|(%d+)|(%d+)|(%d+)|()', MARKLEN + 1)
  if not id or #id > 64 then return nil end
  -- canonical decimals of at most 14 digits (see num): a digit string of
  -- two or more that sorts below "1" has a leading zero
  if #a > 14 or #m > 14 or #l > 14 or #e > 14 or #f > 14 or
    (#a > 1 and a < '1') or (#m > 1 and m < '1') or (#l > 1 and l < '1') or
    (#e > 1 and e < '1') or (#f > 1 and f < '1') then
    return nil
  end
  return id, l, pp
end

-- build_env prints m as an envelope in one concatenation: Lua hashes every
-- byte of every string it makes, so each extra payload-sized string costs.
local function build_env(m)
  return MARK .. m.id .. '|' .. m.attempts .. '|' .. m.max .. '|' .. m.lease .. '|' ..
    m.expiries .. '|' .. m.failures .. '|' .. m.payload
end

-- parse_rec splits a lease record into token and envelope string.
local function parse_rec(rec)
  local tok, pos = string.match(rec, '^(%w+)|()')
  if not tok then return nil, nil end
  return tok, string.sub(rec, pos)
end

-- refused returns nil when the script's user may run cmd with these keys
-- (or channel), else an error reply naming them. Redis checks a script's
-- declared KEYS before it runs, but its commands and channels only at each
-- call, and keeps whatever the script wrote before a refused one: it could
-- leave a message nowhere, or in two places. So every script asks, before
-- its first write, about each command it may call after that write,
-- chained with "or": refused(a) or refused(b) or .... (A command that
-- always runs before the first write needs no check.) It costs no command,
-- only Redis's ACL lookup: about as much as a cheap command, so ask only
-- what is needed.
local function refused(cmd, ...)
  if redis.acl_check_cmd(cmd, ...) then return nil end
  return redis.error_reply('NOPERM ackd: this user may not run ' .. table.concat({cmd, ...}, ' ') ..
    ', which this script needs (see docs/SECURITY.md); nothing was written')
end

-- refused_any is refused for up to eight commands, each with one key or
-- channel: (cmd, key, cmd, key, ...), a nil command skipped. It returns
-- refused's error for the first the user may not run, else nil. One Lua
-- call for all of them: a call of refused costs about a quarter of the
-- check it makes.
local function refused_any(c1, k1, c2, k2, c3, k3, c4, k4, c5, k5, c6, k6, c7, k7, c8, k8)
  local acl = redis.acl_check_cmd
  if acl(c1, k1) and (not c2 or acl(c2, k2)) and (not c3 or acl(c3, k3)) and (not c4 or acl(c4, k4)) and
    (not c5 or acl(c5, k5)) and (not c6 or acl(c6, k6)) and (not c7 or acl(c7, k7)) and
    (not c8 or acl(c8, k8)) then
    return nil
  end
  return refused(c1, k1) or (c2 and refused(c2, k2)) or (c3 and refused(c3, k3)) or (c4 and refused(c4, k4)) or
    (c5 and refused(c5, k5)) or (c6 and refused(c6, k6)) or (c7 and refused(c7, k7)) or (c8 and refused(c8, k8))
end

-- dead_refused checks the commands dead_letter runs.
local function dead_refused(k_dead, k_deadmsgs)
  return refused('HEXISTS', k_deadmsgs) or refused('HLEN', k_deadmsgs) or
    refused('ZADD', k_dead) or refused('HSET', k_deadmsgs)
end

-- first_score is the lowest score of key, kept within 0 and 10^15 ms: a
-- foreign -inf or +inf would not fit the integer reply.
local function first_score(key)
  local r = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if r[2] then return math.max(0, math.min(tonumber(r[2]), 1e15)) end
  return nil
end

-- first_deadline is the earliest lease deadline of both formats (due,
-- format 1's deadlines), as first_score; nil if none is in flight.
local function first_deadline(k_due, k_deadlines)
  local d2, d1 = first_score(k_due), first_score(k_deadlines)
  if d2 and d1 then return math.min(d2, d1) end
  return d2 or d1
end

-- total is a running total of a counts hash (ackd:{q}:counts), kept within
-- 0 and 10^15: 0 if the field is missing or not a number.
local function total(key, field)
  local v = tonumber(redis.call('HGET', key, field)) or 0
  if v ~= v then v = 0 end -- NaN
  return math.floor(math.max(0, math.min(v, 1e15)))
end

-- pull_in rescores up to limit members of key whose score is beyond latest
-- to latest, and returns how many. ackd never writes a deadline or due
-- time more than MAX_MS ahead: anything beyond came from elsewhere (or
-- Redis's clock went back), and would otherwise wait forever.
local function pull_in(key, latest, limit)
  local far = redis.call('ZRANGEBYSCORE', key, '(' .. latest, '+inf', 'LIMIT', 0, limit)
  for i = 1, #far do redis.call('ZADD', key, 'XX', latest, far[i]) end
  return #far
end

-- dead_letter files body under id in the dead set. An id that is already
-- there (a producer reused an id) gets a suffix, so nothing is overwritten.
local function dead_letter(k_dead, k_deadmsgs, id, reason, now, body)
  if redis.call('HEXISTS', k_deadmsgs, id) == 1 then
    id = id .. '.' .. now .. '.' .. redis.call('HLEN', k_deadmsgs)
  end
  redis.call('ZADD', k_dead, now, id)
  redis.call('HSET', k_deadmsgs, id, reason .. '|' .. now .. '|' .. body)
  return id
end

-- wake tells ackd daemons, on the wake channel, that a queue has a new
-- earliest due time. Only sent when the new time is earlier than the
-- earliest one already in the set, so steady traffic publishes nothing.
local function wake(channel, queue, kind, before, at)
  if before == nil or at < before then
    redis.call('PUBLISH', channel, kind .. '|' .. at .. '|' .. queue)
  end
end

-- promote moves up to limit delayed envelopes that are due to the tail of
-- the ready list. Returns how many moved.
local function promote(k_delayed, k_ready, now, limit)
  local due = redis.call('ZRANGEBYSCORE', k_delayed, '-inf', now, 'LIMIT', 0, limit)
  -- One ZREM per element: unpack() fails beyond ~8000 values, and a script
  -- that fails halfway keeps what it already wrote.
  for i = 1, #due do
    redis.call('RPUSH', k_ready, due[i])
    redis.call('ZREM', k_delayed, due[i])
  end
  return #due
end

-- expire_one ends the lease of id whose deadline has passed: back to the
-- head of the ready list, or to the dead set once it has used its deliveries.
-- Returns 1 requeued, 2 dead-lettered (expired), 3 dead-lettered
-- (malformed record), 0 nothing to do (no record).
-- With by_token, id is the token of a lease in held and due (k_leases and
-- k_deadlines), whose record is the envelope as it was before the take
-- (the delivery is its attempts + 1); a record that does not parse is
-- dead-lettered under the token. Else it is format 1: keyed by id, the
-- record token "|" envelope with attempts counting the delivery.
local function expire_one(k_ready, k_leases, k_deadlines, k_dead, k_deadmsgs, id, now, by_token)
  -- Read before writing, and write the new place before removing the old
  -- one: Redis does not roll a script back when a later call fails (a
  -- wrong-type key, a command ACL refuses).
  local rec = redis.call('HGET', k_leases, id)
  if not rec then
    redis.call('ZREM', k_deadlines, id)
    return 0
  end
  local m
  if by_token then
    m = parse_env(rec)
    if m then m.attempts = m.attempts + 1 end
  else
    local _, envs = parse_rec(rec)
    m = envs and parse_env(envs)
    if m and m.id ~= id then m = nil end
  end
  local status = 1
  if not m then
    dead_letter(k_dead, k_deadmsgs, id, 'malformed', now, rec)
    status = 3
  else
    m.expiries = m.expiries + 1
    if m.max > 0 and m.attempts >= m.max then
      dead_letter(k_dead, k_deadmsgs, m.id, 'expired', now, build_env(m))
      status = 2
    else
      redis.call('LPUSH', k_ready, build_env(m))
    end
  end
  redis.call('HDEL', k_leases, id)
  redis.call('ZREM', k_deadlines, id)
  return status
end

-- expire_refused checks the commands expire_one runs after its first
-- write, for leases of both formats.
local function expire_refused(k_ready, k_held, k_due, k_leases, k_deadlines, k_dead, k_deadmsgs)
  return refused_any('LPUSH', k_ready, 'HGET', k_held, 'HDEL', k_held, 'ZREM', k_due,
    'HGET', k_leases, 'HDEL', k_leases, 'ZREM', k_deadlines) or dead_refused(k_dead, k_deadmsgs)
end

-- lease_arg splits a lease argument, token or token "|" id (the caller
-- wants the id checked too), into token and id (nil without). A token is
-- exactly 16 bytes: a longer argument is read as token "|" id. Every
-- script that names leases reads its arguments with it.
local function lease_arg(s)
  if #s == 16 then return s, nil end
  return string.sub(s, 1, 16), string.sub(s, 18)
end

-- release_refused checks the commands release runs after its first write
-- (put's, or dead_letter's for a malformed record).
local function release_refused(k_held, k_due, k_shadow, k_dead, k_deadmsgs)
  return refused('HDEL', k_held) or refused('ZREM', k_due) or refused('DEL', k_shadow) or
    dead_refused(k_dead, k_deadmsgs)
end

-- release ends the lease that token holds (of message id, if id is given):
-- put(m) writes the message to its new place and returns a status, then
-- the lease record, the shadow key and the deadline are removed, in that
-- order. m is the record parsed, attempts counting this delivery. Returns
-- put's status, or 0 not held, -1 the token holds a lease of another
-- message (both change nothing), 3 the record was malformed (it is a dead
-- letter now, under the token: its id is unknown). The new place is
-- written first because Redis does not roll a script back when a later
-- command fails (a key overwritten with another type): the message is
-- then in its new place, or still held. The deadline goes last, and a due
-- key of the wrong type holds no deadline to remove: its error is ignored
-- (ACL refusals are asked about before the first write).
local function release(k_held, k_due, k_shadow, k_dead, k_deadmsgs, token, id, now, put)
  local rec = redis.call('HGET', k_held, token)
  if not rec then return 0 end
  local m = parse_env(rec)
  if m and id and m.id ~= id then return -1 end
  local status = 3
  if not m then
    dead_letter(k_dead, k_deadmsgs, token, 'malformed', now, rec)
  else
    m.attempts = m.attempts + 1
    status = put(m)
  end
  redis.call('HDEL', k_held, token)
  redis.call('DEL', k_shadow)
  redis.pcall('ZREM', k_due, token)
  return status
end

-- ack_refused checks the commands ack_leases runs after its first write
-- (the first HDEL): for one lease, those after it; for more, HGET and HDEL
-- too (a lease named with its id is read after another was ended).
local function ack_refused(k_held, k_due, k_counts, k_shadow, a)
  return refused_any('DEL', k_shadow, 'ZREM', k_due, 'HINCRBY', k_counts,
    a > 1 and 'HDEL' or nil, k_held, a > 1 and 'HGET' or nil, k_held)
end

-- other_message is true when rec, the lease record a token holds, is not
-- of message id: the record's id is the bytes after MARK up to "|". Only
-- strings of the id's size are made, never of the payload's.
local function other_message(rec, id)
  return string.sub(rec, 1, MARKLEN + #id + 1) ~= MARK .. id .. '|'
end

-- ack_leases ends the leases given by ARGV[b + j] (token, or token "|" id
-- to have the lease's message checked too), shadow keys KEYS[sk + j], j =
-- 1..a, for good, and writes one status per lease to out[o + j]: 1 acked,
-- 0 not held (the token holds no lease), -1 the token holds a lease of
-- another message (nothing changed). It adds the number acked to the field
-- "acked" of k_counts. One lease (the common case) is ended without a
-- table.
-- Leases are keyed by their token, which only the taker knows: HDEL of the
-- token's field is the proof, without reading the record. The shadow key
-- is no proof: data written by others may outlive a lease.
local function ack_leases(k_held, k_due, k_counts, b, sk, a, out, o)
  -- the tokens acked and their shadow keys: for one lease t1 and s1, for
  -- more toks[1..n] and shadows[1..n]; seen marks a token acked by this
  -- call, so that the same lease twice counts once
  local t1, s1, toks, shadows, seen, n = nil, nil, nil, nil, nil, 0
  if a > 1 then toks, shadows, seen = {}, {}, {} end
  for j = 1, a do
    local token, id = lease_arg(ARGV[b + j])
    local st = 1
    -- a lease this call acked already reports 1 again, however named
    if not (seen and seen[token]) then
      if id then
        local rec = redis.call('HGET', k_held, token)
        if not rec then
          st = 0
        elseif other_message(rec, id) then
          st = -1
        end
      end
      if st == 1 then
        if redis.call('HDEL', k_held, token) == 1 then
          n = n + 1
          if seen then
            seen[token] = true
            toks[n], shadows[n] = token, KEYS[sk + j]
          else
            t1, s1 = token, KEYS[sk + j]
          end
        else
          st = 0
        end
      end
    end
    out[o + j] = st
  end
  if n == 0 then return end
  -- the shadow keys, then the deadlines. A due key of the wrong type
  -- (written by someone else) holds no deadline to remove, and a counts
  -- key of the wrong type loses the count: their errors are ignored, so
  -- that the acks that have happened report success (ACL refusals were
  -- asked first). unpack is a library call: one lease goes without.
  if t1 then
    redis.call('DEL', s1)
    redis.pcall('ZREM', k_due, t1)
    redis.pcall('HINCRBY', k_counts, 'acked', '1')
  else
    redis.call('DEL', unpack(shadows, 1, n))
    redis.pcall('ZREM', k_due, unpack(toks, 1, n))
    redis.pcall('HINCRBY', k_counts, 'acked', n == 1 and '1' or n)
  end
end
