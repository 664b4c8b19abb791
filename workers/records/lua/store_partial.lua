-- KEYS: record, partials, leases. ARGV: attempt, shard, partial JSON, shards, the shard's
-- lease member, lease ms, the job's lease member.
-- 0: not current (dropped); 1: kept, more to come; 2: kept, and it was the last: merge now;
-- 3: another delivery had kept it already.
$CURRENT$NOW_MS
redis.call('ZREM', KEYS[3], ARGV[5])
if redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[3]) == 0 then return 3 end
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
if redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[4]) then
  -- The merge holds the job's own lease: lost mid-merge, the job is sent again and its next
  -- attempt, finding every partial kept, only merges.
  local deadline = now_ms + tonumber(ARGV[6])
  redis.call('ZADD', KEYS[3], deadline, ARGV[7])
  redis.call('HSET', KEYS[1], 'lease_until', deadline)
  return 2
end
return 1
