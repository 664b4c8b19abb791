-- KEYS: record, leases. ARGV: attempt, lease member.
$CURRENT
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
