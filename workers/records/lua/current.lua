-- A Lua guard: return 0 unless the record is running under attempt ARGV[1].
if redis.call('HGET', KEYS[1], 'status') ~= 'running'
   or redis.call('HGET', KEYS[1], 'attempts') ~= ARGV[1] then return 0 end
