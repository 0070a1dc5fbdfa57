-- Returns how many failed jobs were made due again.
for _, id in ipairs(chosen) do
  local key = job_prefix .. id
  redis.call('ZREM', failed, id)
  redis.call('HSET', key, 'attempts', 0)
  redis.call('HDEL', key, 'failed_at')
  redis.call('ZADD', queue, redis.call('HGET', key, 'rank'), id)
end
return #chosen
