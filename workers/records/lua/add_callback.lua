-- KEYS: record, callbacks outbox. ARGV: job id.
-- Make the job's callback due now, once per job (the record's cb_state says it was added).
-- Returns 1 when added, 0 when the record is gone or it was added before.
$NOW_MS
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HSETNX', KEYS[1], 'cb_state', 'due') == 0 then return 0 end
redis.call('ZADD', KEYS[2], now_ms, ARGV[1])
return 1
