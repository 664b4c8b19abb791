-- KEYS: record, callbacks outbox. ARGV: job id, claim token, retry in ms (-1: done).
-- End a claim, or make it due again with one more try counted; nothing (0) when the
-- token is not the record's latest (the lease lapsed and another process claimed it).
$NOW_MS
if tonumber(redis.call('HGET', KEYS[1], 'cb_token') or '0') ~= tonumber(ARGV[2]) then
    return 0
end
if tonumber(ARGV[3]) < 0 then
    redis.call('ZREM', KEYS[2], ARGV[1])
    redis.call('HSET', KEYS[1], 'cb_state', 'done')
else
    redis.call('HINCRBY', KEYS[1], 'cb_tries', 1)
    redis.call('ZADD', KEYS[2], now_ms + tonumber(ARGV[3]), ARGV[1])
end
return 1
