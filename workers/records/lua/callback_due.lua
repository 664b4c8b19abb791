-- Lua: callback_due(rec) makes the callback of the job whose record is rec due now, when it
-- has one, once per job (the record's cb_state says it was added). Every script that ends a
-- job calls it beside the final write, so no process lost between the two loses a callback.
local function callback_due(rec)
  if redis.call('HEXISTS', rec, 'callback_url') == 0 then return end
  if redis.call('HSETNX', rec, 'cb_state', 'due') == 0 then return end
  local t = redis.call('TIME')
  local at_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', '$CALLBACKS_KEY', at_ms, redis.call('HGET', rec, 'id'))
end
