-- KEYS: callbacks outbox. ARGV: lease in ms, the most to claim.
-- The due callbacks, each made due again one lease later (no other process claims it
-- meanwhile) under a new token (cb_token in its record). An entry whose record is gone
-- (deleted, expired) is dropped. Returns {job id, tries so far, token} per claim.
$NOW_MS
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[2]))
local claimed = {}
for _, id in ipairs(ids) do
    local key = '$KEY_PREFIX' .. id
    if redis.call('EXISTS', key) == 0 then
        redis.call('ZREM', KEYS[1], id)
    else
        redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[1]), id)
        local token = redis.call('HINCRBY', key, 'cb_token', 1)
        local tries = tonumber(redis.call('HGET', key, 'cb_tries') or '0')
        claimed[#claimed + 1] = {id, tries, token}
    end
end
return claimed
