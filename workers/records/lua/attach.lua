-- KEYS: record, arrays. ARGV: attempt, the bytes, ttl. Only the current attempt attaches.
$CURRENT
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
return 1
