-- KEYS: every key of the job. Returns 0 unknown, 1 deleted, 2 not finished.
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 0 end
if not ($FINISHED) then return 2 end
$FORGET
local idem = redis.call('HGET', KEYS[1], 'idem')
if idem then redis.call('DEL', idem) end
redis.call('DEL', unpack(KEYS))
return 1
