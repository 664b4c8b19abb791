-- KEYS: record, checkpoint. ARGV: attempt, the bytes. Only the current attempt checkpoints.
$CURRENT
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('SET', KEYS[2], ARGV[2], 'PX', ttl)
else redis.call('SET', KEYS[2], ARGV[2]) end
return 1
