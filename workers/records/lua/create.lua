-- KEYS: record, idempotency key or '', the owner's active set, the owner's jobs (a sorted set
-- by creation time, for listing). ARGV: ttl, fingerprint, job id, most active jobs of the owner
-- (0: no limit), created at (epoch seconds), then field/value pairs.
-- With a live idempotency key: {'exists', job id, fingerprint}; over the owner's quota:
-- {'quota', active count, ''}; else the record is written.
if KEYS[2] ~= '' then
  local known = redis.call('HMGET', KEYS[2], 'job', 'fingerprint')
  if known[1] and redis.call('EXISTS', '$KEY_PREFIX' .. known[1]) == 1 then
    return {'exists', known[1], known[2]}
  end
end
local quota = tonumber(ARGV[4])
if quota > 0 then
  local active = 0
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[3])) do
    local st = redis.call('HGET', '$KEY_PREFIX' .. id, 'status')
    if st == 'queued' or st == 'running' then
      active = active + 1
    else
      redis.call('SREM', KEYS[3], id)
    end
  end
  if active >= quota then return {'quota', tostring(active), ''} end
end
if KEYS[2] ~= '' then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[2], 'job', ARGV[3], 'fingerprint', ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[1])
end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[3])
redis.call('EXPIRE', KEYS[4], ARGV[1])
return {'created', ARGV[3], ARGV[2]}
