-- KEYS: record, preview. ARGV: attempt, progress JSON, preview PNG or ''.
$CURRENT
redis.call('HSET', KEYS[1], 'progress', ARGV[2])
if ARGV[3] ~= '' then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then redis.call('SET', KEYS[2], ARGV[3], 'PX', ttl)
  else redis.call('SET', KEYS[2], ARGV[3]) end
end
return 1
