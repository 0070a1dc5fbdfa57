-- Every script gets KEYS = queue, delayed, leased, failed, seq and ARGV[1] = the job key
-- prefix; job hashes are named from it (they share the hash tag, so a cluster agrees).
local queue, delayed, leased, failed, seq = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local job_prefix = ARGV[1]

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function promote(zset, now)
  local due = redis.call('ZRANGEBYSCORE', zset, '-inf', now)
  for _, id in ipairs(due) do
    local rank = redis.call('HGET', job_prefix .. id, 'rank')
    if rank then redis.call('ZADD', queue, rank, id) end
  end
  if #due > 0 then redis.call('ZREMRANGEBYSCORE', zset, '-inf', now) end
end

local function unqueue(id)
  redis.call('ZREM', queue, id)
  redis.call('ZREM', delayed, id)
  redis.call('ZREM', leased, id)
end

local function fields(key, ...)
  return redis.call('HMGET', key, 'name', 'payload', 'headers', 'priority', 'auto_ack', ...)
end
