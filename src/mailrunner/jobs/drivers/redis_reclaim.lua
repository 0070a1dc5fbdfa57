-- ARGV[2] = this node's token prefix, ARGV[3] = this process's. Every job leased by an earlier
-- process of this node goes back to the queue, as its lease expiry would do (attempts
-- unchanged); returns how many.
local node, own = ARGV[2], ARGV[3]
local reclaimed = 0
for _, id in ipairs(redis.call('ZRANGE', leased, 0, -1)) do
  local key = job_prefix .. id
  local token = redis.call('HGET', key, 'token') or ''
  if string.sub(token, 1, #node) == node and string.sub(token, 1, #own) ~= own then
    redis.call('ZREM', leased, id)
    redis.call('HDEL', key, 'token')
    redis.call('ZADD', queue, redis.call('HGET', key, 'rank'), id)
    reclaimed = reclaimed + 1
  end
end
return reclaimed
