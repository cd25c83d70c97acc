-- release.lua: give held leases back unfinished (the consumer is stopping),
-- as if these deliveries never happened: each message goes back to the head
-- of the ready list with its attempt count as it was before the take, so a
-- stop never pushes a message toward the dead set.
-- KEYS[1] ackd:{q}:ready      LIST
-- KEYS[2] ackd:{q}:leases     HASH
-- KEYS[3] ackd:{q}:deadlines  ZSET
-- KEYS[4] ackd:{q}:dead       ZSET
-- KEYS[5] ackd:{q}:deadmsgs   HASH
-- KEYS[5+i] ackd:{q}:lease:<token_i>  shadow key of the i-th lease
-- ARGV[2i-1] id_i, ARGV[2i] token_i
-- The first lease given ends up first on the ready list.
-- returns one status per lease: 1 released, 3 dead-lettered (malformed
-- record), 0 not held, -1 stale token (both change nothing)
-- Every message is written to its new place before its lease is removed,
-- and every command it may write with is checked first: a user who may not
-- run one of them gets an error and nothing is written (a call refused
-- halfway would leave a duplicate).
local n = #ARGV / 2
local denied = refused('LPUSH', KEYS[1]) or refused('HDEL', KEYS[2]) or refused('ZREM', KEYS[3]) or
  dead_refused(KEYS[4], KEYS[5]) or (n > 0 and refused('DEL', unpack(KEYS, 6, 5 + n)))
if denied then return denied end
local ids, first = {}, {}
for i = 1, n do
  ids[i] = ARGV[2 * i - 1]
  first[ids[i]] = first[ids[i]] or i
end
local recs = redis.call('HMGET', KEYS[2], unpack(ids))
local out, done, shadows = {}, {}, {}
local now, failed = nil, nil
-- Backwards, so that LPUSH leaves them in the order given. A write that
-- fails (a key overwritten with another type by someone else) stops the
-- loop: the leases whose messages are in their new place are removed
-- below, the others stay held, and the call fails.
for i = n, 1, -1 do
  local rec = recs[i]
  out[i] = 0
  -- an id given twice is released once, with its first token
  if first[ids[i]] ~= i then rec = nil end
  if rec then
    local tok, envs = parse_rec(rec)
    if tok and tok ~= ARGV[2 * i] then
      out[i] = -1
    else
      local ok, err = pcall(function()
        local m = envs and parse_env(envs)
        if not tok or not m or m.id ~= ids[i] then
          now = now or now_ms()
          dead_letter(KEYS[4], KEYS[5], ids[i], 'malformed', now, rec)
          out[i] = 3
        else
          if m.attempts > 0 then m.attempts = m.attempts - 1 end
          redis.call('LPUSH', KEYS[1], build_env(m))
          out[i] = 1
        end
      end)
      if not ok then
        failed = err
        break
      end
      done[#done + 1] = ids[i]
      shadows[#shadows + 1] = KEYS[5 + i]
    end
  end
end
if #done > 0 then
  redis.call('HDEL', KEYS[2], unpack(done))
  redis.call('DEL', unpack(shadows))
  -- a deadlines key of the wrong type holds no deadline to remove
  redis.pcall('ZREM', KEYS[3], unpack(done))
end
if failed then return redis.error_reply(type(failed) == 'table' and failed.err or tostring(failed)) end
return out
