-- KEYS: record, leases. ARGV: attempt, lease member, lease ms, shard or '', holder or ''.
-- 1: renewed; 0: the attempt (or this delivery of the shard) must stop.
$CURRENT$NOW_MS
local deadline = now_ms + tonumber(ARGV[3])
if ARGV[4] == '' then
  redis.call('HSET', KEYS[1], 'lease_until', deadline)
else
  local shards = KEYS[1] .. ':shards'
  if redis.call('HGET', shards, 'holder:' .. ARGV[4]) ~= ARGV[5] then return 0 end
  -- The job's lease is the latest of its shards': cancel ends it at once only when all lapsed.
  local due = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0')
  if deadline > due then redis.call('HSET', KEYS[1], 'lease_until', deadline) end
end
redis.call('ZADD', KEYS[2], deadline, ARGV[2])
return 1
