-- pause.lua: pause a queue: takes lease nothing until resume (DEL of the key).
-- KEYS[1] ackd:{q}:paused     STRING  set to when it was paused (ms)
-- returns 1 paused now, 0 it already was (the first time is kept)
if redis.call('SET', KEYS[1], now_ms(), 'NX') then return 1 end
return 0
