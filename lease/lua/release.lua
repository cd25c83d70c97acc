-- release.lua: give held leases back unfinished (the consumer is stopping),
-- as if these deliveries never happened: each message goes back to the head
-- of the ready list as it stood there before the take (the lease record
-- itself), so a stop never pushes a message toward the dead set.
-- KEYS[1] ackd:{q}:ready      LIST
-- KEYS[2] ackd:{q}:held       HASH
-- KEYS[3] ackd:{q}:due        ZSET
-- KEYS[4] ackd:{q}:dead       ZSET
-- KEYS[5] ackd:{q}:deadmsgs   HASH
-- KEYS[5+i] ackd:{q}:lease:<token_i>  shadow key of the i-th lease
-- ARGV[i] token_i, or token_i "|" id_i to check the id too
-- The first lease given ends up first on the ready list.
-- returns one status per lease: 1 released, 3 dead-lettered (malformed
-- record), 0 not held, -1 the token holds a lease of another message (both
-- change nothing)
-- Every message is written to its new place before its lease is removed,
-- and every command it may write with is checked first: a user who may not
-- run one of them gets an error and nothing is written (a call refused
-- halfway would leave a duplicate).
local n = #ARGV
local denied = refused('LPUSH', KEYS[1]) or refused('HDEL', KEYS[2]) or refused('ZREM', KEYS[3]) or
  dead_refused(KEYS[4], KEYS[5]) or (n > 0 and refused('DEL', unpack(KEYS, 6, 5 + n)))
if denied then return denied end
local tokens, ids, first = {}, {}, {}
for i = 1, n do
  tokens[i], ids[i] = lease_arg(ARGV[i])
  first[tokens[i]] = first[tokens[i]] or i
end
local recs = redis.call('HMGET', KEYS[2], unpack(tokens))
local out, done, shadows = {}, {}, {}
local now, failed = nil, nil
-- Backwards, so that LPUSH leaves them in the order given. A write that
-- fails (a key overwritten with another type by someone else) stops the
-- loop: the leases whose messages are in their new place are removed
-- below, the others stay held, and the call fails.
for i = n, 1, -1 do
  local rec = recs[i]
  out[i] = 0
  -- a token given twice is released once, as given first
  if first[tokens[i]] ~= i then rec = nil end
  if rec then
    -- what the checks need of the record, without copying its payload
    local id = string.sub(rec, 1, MARKLEN) == MARK and take_env(rec)
    if id and ids[i] and id ~= ids[i] then
      out[i] = -1
    else
      local ok, err = pcall(function()
        if not id then
          now = now or now_ms()
          dead_letter(KEYS[4], KEYS[5], tokens[i], 'malformed', now, rec)
          out[i] = 3
        else
          redis.call('LPUSH', KEYS[1], rec)
          out[i] = 1
        end
      end)
      if not ok then
        failed = err
        break
      end
      done[#done + 1] = tokens[i]
      shadows[#shadows + 1] = KEYS[5 + i]
    end
  end
end
if #done > 0 then
  redis.call('HDEL', KEYS[2], unpack(done))
  redis.call('DEL', unpack(shadows))
  -- a due key of the wrong type holds no deadline to remove
  redis.pcall('ZREM', KEYS[3], unpack(done))
end
if failed then return redis.error_reply(type(failed) == 'table' and failed.err or tostring(failed)) end
return out
