-- Fragment of finish: count the job that just finished (KEYS[1] its record; KEYS[2], KEYS[3],
-- KEYS[5] its result, preview and arrays) and, past the cap ARGV[7] (0: none), delete the
-- oldest finished jobs' parts until the rest fit (workers/records/redis_cap.py).
local kept_key, sizes_key, total_key = '$KEPT_KEY', '$KEPT_SIZES_KEY', '$KEPT_TOTAL_KEY'
local size = redis.call('STRLEN', KEYS[2]) + redis.call('STRLEN', KEYS[3])
  + redis.call('STRLEN', KEYS[5])
if size > 0 then
  local id = redis.call('HGET', KEYS[1], 'id')
  redis.call('ZADD', kept_key, ARGV[3], id)
  redis.call('HSET', sizes_key, id, size)
  redis.call('INCRBY', total_key, size)
end
local cap = tonumber(ARGV[7] or '0')
if cap > 0 then
  local total = tonumber(redis.call('GET', total_key) or '0')
  while total > cap do
    local oldest = redis.call('ZRANGE', kept_key, 0, 0)[1]
    if not oldest then break end
    local kept = tonumber(redis.call('HGET', sizes_key, oldest) or '0')
    redis.call('ZREM', kept_key, oldest)
    redis.call('HDEL', sizes_key, oldest)
    total = redis.call('DECRBY', total_key, kept)
    local rec = '$KEY_PREFIX' .. oldest
    redis.call('DEL', rec .. ':result', rec .. ':preview', rec .. ':arrays')
    if redis.call('EXISTS', rec) == 1 then
      redis.call('HSET', rec, 'expired', '1')
      local old_idem = redis.call('HGET', rec, 'idem')
      if old_idem then redis.call('DEL', old_idem) end
    end
  end
end
