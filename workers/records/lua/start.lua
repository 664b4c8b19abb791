-- KEYS: record, shards, leases. ARGV: now, max attempts, error JSON for too many attempts,
-- ttl, holder (the delivery's task id), lease ms, lease member.
-- A delivery takes the job over from a running attempt only when that attempt's lease lapsed
-- or it is the same delivery again (Celery gives a killed pool child's message back at once):
-- a second message of a job that runs under a live lease (a restored original after the
-- sweeper sent the job again) does not stop it.
$NOW_MS
$CALLBACK_DUE
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {'gone', 0} end
if $FINISHED then return {'finished', 0} end
local function close(status)
  redis.call('HSET', KEYS[1], 'status', status, 'finished_at', ARGV[1])
  callback_due(KEYS[1])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  redis.call('ZREM', KEYS[3], ARGV[7])
end
if redis.call('HGET', KEYS[1], 'cancel') == '1' then
  close('cancelled')
  return {'cancelled', 0}
end
if st == 'running' and redis.call('HGET', KEYS[1], 'holder') ~= ARGV[5] then
  local due = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0')
  if due > now_ms then return {'leased', 0} end
end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if attempt > tonumber(ARGV[2]) then
  close('failed')
  redis.call('HSET', KEYS[1], 'error', ARGV[3])
  return {'exhausted', attempt}
end
local deadline = now_ms + tonumber(ARGV[6])
redis.call('HSET', KEYS[1], 'status', 'running', 'holder', ARGV[5], 'lease_until', deadline)
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[1])
redis.call('ZADD', KEYS[3], deadline, ARGV[7])
-- Progress stays: the attempt resumes from the last checkpoint and reports from there.
-- Delivery counts are per attempt; the work done by shards whose partials are kept stays.
for _, field in ipairs(redis.call('HKEYS', KEYS[2])) do
  if string.sub(field, 1, 2) == 'n:' or string.sub(field, 1, 7) == 'holder:' then
    redis.call('HDEL', KEYS[2], field)
  end
end
return {'run', attempt}
