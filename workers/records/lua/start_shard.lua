-- KEYS: record, shards, partials, leases. ARGV: attempt, shard, max deliveries, now, error
-- JSON, ttl, holder, lease ms, lease member.
-- 'run', 'done' (its partial is kept), 'leased' (another delivery runs it) or 'stop' (not
-- current, cancelled, or delivered too often: the job fails).
$CALLBACK_DUE
if redis.call('HGET', KEYS[1], 'status') ~= 'running'
   or redis.call('HGET', KEYS[1], 'attempts') ~= ARGV[1] then return 'stop' end
$NOW_MS
if redis.call('HGET', KEYS[1], 'cancel') == '1' then return 'stop' end
if redis.call('HEXISTS', KEYS[3], ARGV[2]) == 1 then return 'done' end
local holder = redis.call('HGET', KEYS[2], 'holder:' .. ARGV[2])
if holder and holder ~= ARGV[7] then
  local due = tonumber(redis.call('ZSCORE', KEYS[4], ARGV[9]) or '0')
  if due > now_ms then return 'leased' end
end
local n = redis.call('HINCRBY', KEYS[2], 'n:' .. ARGV[2], 1)
redis.call('HSET', KEYS[2], 'done:' .. ARGV[2], 0, 'holder:' .. ARGV[2], ARGV[7])
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
if n > tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'status', 'failed', 'finished_at', ARGV[4], 'error', ARGV[5])
  callback_due(KEYS[1])
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  redis.call('ZREM', KEYS[4], ARGV[9])
  return 'stop'
end
local deadline = now_ms + tonumber(ARGV[8])
redis.call('ZADD', KEYS[4], deadline, ARGV[9])
local due = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0')
if deadline > due then redis.call('HSET', KEYS[1], 'lease_until', deadline) end
return 'run'
