-- KEYS: record. ARGV: attempt, shards. The number of shards, for the sweeper.
$CURRENT
redis.call('HSET', KEYS[1], 'shards', ARGV[2])
return 1
