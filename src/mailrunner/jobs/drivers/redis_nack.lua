-- ARGV[4] = '1' to requeue, ARGV[5] = delay (ms), ARGV[6] = error, ARGV[7] = new headers.
unqueue(id)
redis.call('HDEL', key, 'token')
redis.call('HSET', key, 'error', ARGV[6])
if ARGV[7] then redis.call('HSET', key, 'headers', ARGV[7]) end
local now = now_ms()
if ARGV[4] ~= '1' then
  redis.call('HSET', key, 'failed_at', now)
  redis.call('ZADD', failed, redis.call('INCR', seq), id)
elseif tonumber(ARGV[5]) > 0 then
  redis.call('ZADD', delayed, now + tonumber(ARGV[5]), id)
else
  redis.call('ZADD', queue, redis.call('HGET', key, 'rank'), id)
end
return 1
