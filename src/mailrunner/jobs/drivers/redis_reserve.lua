-- ARGV: prefix, limit, visibility (ms), token base.
-- Returns {leases, ms until the next job is due or -1}; a lease is
-- {id, name, payload, headers, priority, auto_ack, attempt, token}.
local limit, visibility, token_base = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local now = now_ms()
promote(delayed, now)
promote(leased, now)
local leases = {}
local popped = redis.call('ZPOPMIN', queue, limit)
for i = 1, #popped, 2 do
  local id = popped[i]
  local key = job_prefix .. id
  if redis.call('EXISTS', key) == 1 then
    local token = token_base .. '.' .. i
    local attempt = redis.call('HINCRBY', key, 'attempts', 1)
    redis.call('HSET', key, 'token', token)
    redis.call('ZADD', leased, now + visibility, id)
    local f = fields(key)
    leases[#leases + 1] = {id, f[1], f[2], f[3], f[4], f[5], attempt, token}
  end
end
local next_due = -1
if redis.call('ZCARD', queue) > 0 then
  next_due = 0
else
  for _, zset in ipairs({delayed, leased}) do
    local first = redis.call('ZRANGE', zset, 0, 0, 'WITHSCORES')
    if first[2] then
      local wait = tonumber(first[2]) - now
      if next_due < 0 or wait < next_due then next_due = wait end
    end
  end
end
return {leases, next_due}
