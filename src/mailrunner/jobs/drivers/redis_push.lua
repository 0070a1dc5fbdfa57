-- ARGV: prefix, deadline (Redis unix ms), then per job: id, name, payload, headers,
-- priority, auto_ack, delay (ms). Returns how many were new, or -1 when refused as late.
local deadline = tonumber(ARGV[2])
local now = now_ms()
if now > deadline then return -1 end
local stored = {}
for i = 3, #ARGV, 7 do
  local id = ARGV[i]
  local key = job_prefix .. id
  if redis.call('EXISTS', key) == 0 then
    local priority = math.min(tonumber(ARGV[i + 4]), 8191)
    local rank = string.format('%.0f', priority * 1099511627776 + redis.call('INCR', seq))
    redis.call('HSET', key, 'name', ARGV[i + 1], 'payload', ARGV[i + 2],
      'headers', ARGV[i + 3], 'priority', ARGV[i + 4], 'auto_ack', ARGV[i + 5],
      'attempts', 0, 'rank', rank, 'created', now)
    local delay = tonumber(ARGV[i + 6])
    if delay > 0 then
      redis.call('ZADD', delayed, now + delay, id)
    else
      redis.call('ZADD', queue, rank, id)
    end
    stored[#stored + 1] = id
  end
end
if now_ms() > deadline then
  for _, id in ipairs(stored) do
    redis.call('DEL', job_prefix .. id)
    redis.call('ZREM', queue, id)
    redis.call('ZREM', delayed, id)
  end
  return -1
end
return #stored
