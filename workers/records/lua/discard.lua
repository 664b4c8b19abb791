-- KEYS: every key of the job. Unconditional: for a job that never reached the queue.
local idem = redis.call('HGET', KEYS[1], 'idem')
if idem then redis.call('DEL', idem) end
redis.call('DEL', unpack(KEYS))
return 1
