-- Fragment of delete: the job (KEYS[1] its record) leaves the byte cap's count.
local job = redis.call('HGET', KEYS[1], 'id')
local kept = redis.call('HGET', '$KEPT_SIZES_KEY', job)
if kept then
  redis.call('HDEL', '$KEPT_SIZES_KEY', job)
  redis.call('ZREM', '$KEPT_KEY', job)
  redis.call('DECRBY', '$KEPT_TOTAL_KEY', kept)
end
