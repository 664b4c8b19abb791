-- Lua: Redis's own clock in milliseconds, so that leases written by workers and read by the
-- sweeper compare on one clock whatever the machines' clocks say.
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
