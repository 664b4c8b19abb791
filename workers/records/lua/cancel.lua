-- KEYS: record, leases. ARGV: now, ttl. A queued job is cancelled here, and so is a running
-- one whose lease lapsed (nothing runs it to see the flag); a running one at its next check.
-- 1: done; 2: the job ended here (its callback is due); 0: unknown.
$NOW_MS
$CALLBACK_DUE
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 0 end
if $FINISHED then return 1 end
redis.call('HSET', KEYS[1], 'cancel', '1')
local lapsed = false
if st == 'running' then
  local due = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '')
  lapsed = due ~= nil and due <= now_ms
end
if st == 'queued' or lapsed then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[1])
  callback_due(KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[3])
  if st == 'running' then
    redis.call('EXPIRE', KEYS[1], ARGV[2])
    return 2
  end
end
return 1
