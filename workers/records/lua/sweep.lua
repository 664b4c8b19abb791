-- KEYS: leases. ARGV: most claims, ttl of a record that ends here, lease ms.
-- Every lapsed lease, claimed once (whoever runs the sweep: one API or many). A job's own
-- lease puts the job back to queued for its next attempt; a shard's frees the shard; a job
-- asked to stop is cancelled. A claim to send something again keeps its member, due a lease
-- from now times the sends so far (at most 10): if what was sent has not started by then
-- (the send was lost, or waits behind a long queue), it is claimed and sent again, less and
-- less often; copies are harmless (a start under a live lease is refused), only wasteful.
-- Returns {id, action, shard, shards, attempt, delivery} per claim, where delivery numbers
-- the sends of this job (for a fresh task id).
$NOW_MS
$CALLBACK_DUE
local claims = {}
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0,
                                   tonumber(ARGV[1]))) do
  local sep = string.find(member, '#', 1, true)
  local id = sep and string.sub(member, 1, sep - 1) or member
  local shard = sep and string.sub(member, sep + 1) or ''
  local rec = '$KEY_PREFIX' .. id
  local st = redis.call('HGET', rec, 'status')
  local attempt = redis.call('HGET', rec, 'attempts') or '0'
  local shards = redis.call('HGET', rec, 'shards') or '1'
  if st == 'running' and redis.call('HGET', rec, 'cancel') == '1' then
    redis.call('ZREM', KEYS[1], member)
    redis.call('HSET', rec, 'status', 'cancelled', 'finished_at', now_ms / 1000)
    callback_due(rec)
    redis.call('EXPIRE', rec, ARGV[2])
    table.insert(claims, {id, 'cancelled', '0', shards, attempt, '0'})
  elseif (st == 'running' or st == 'queued') and shard == '' then
    if st == 'running' then
      redis.call('HSET', rec, 'status', 'queued')
      redis.call('HDEL', rec, 'holder', 'lease_until')
    end
    local delivery = redis.call('HINCRBY', rec, 'resent', 1)
    redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[3]) * math.min(delivery, 10), member)
    table.insert(claims, {id, 'job', '0', shards, attempt, tostring(delivery)})
  elseif st == 'running' then
    redis.call('HDEL', rec .. ':shards', 'holder:' .. shard)
    local delivery = redis.call('HINCRBY', rec, 'resent', 1)
    redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[3]) * math.min(delivery, 10), member)
    table.insert(claims, {id, 'shard', shard, shards, attempt, tostring(delivery)})
  else
    redis.call('ZREM', KEYS[1], member)
  end
end
return claims
