-- KEYS: record, shards. ARGV: attempt, shard, done, total.
-- The job's progress is the sum of its shards' work: a shard delivered again starts from 0.
$CURRENT
redis.call('HSET', KEYS[2], 'done:' .. ARGV[2], ARGV[3])
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
local sum = 0
local fields = redis.call('HGETALL', KEYS[2])
for i = 1, #fields, 2 do
  if string.sub(fields[i], 1, 5) == 'done:' then sum = sum + tonumber(fields[i + 1]) end
end
local total = tonumber(ARGV[4])
if sum > total then sum = total end
redis.call('HSET', KEYS[1], 'progress',
  string.format('{"step":%d,"total":%d,"unit":"images"}', sum, total))
return 1
