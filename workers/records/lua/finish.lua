-- KEYS: every key of the job (record, result, preview, shards, arrays, checkpoint, partials),
-- then the leases. ARGV: attempt, status, now, error JSON or '', result JSON or '', ttl, the
-- byte cap of what finished jobs keep (0: none; see workers/records/redis_cap.py).
$CURRENT
$CALLBACK_DUE
if ARGV[2] == 'succeeded' then
  if not redis.call('SET', KEYS[2], ARGV[5], 'NX', 'EX', ARGV[6]) then return 0 end
end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'finished_at', ARGV[3])
callback_due(KEYS[1])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[4]) end
redis.call('EXPIRE', KEYS[1], ARGV[6])
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('EXPIRE', KEYS[3], ARGV[6]) end
redis.call('DEL', KEYS[4], KEYS[6], KEYS[7])
redis.call('ZREM', KEYS[8], redis.call('HGET', KEYS[1], 'id'))
local idem = redis.call('HGET', KEYS[1], 'idem')
if idem then redis.call('EXPIRE', idem, ARGV[6]) end
$KEEP
return 1
