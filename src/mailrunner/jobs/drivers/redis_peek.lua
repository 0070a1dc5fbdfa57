-- ARGV[2] = limit. Returns {id, name, payload, headers, priority, auto_ack} per job.
local limit = tonumber(ARGV[2])
local now = now_ms()
promote(delayed, now)
promote(leased, now)
local ids = redis.call('ZRANGE', queue, 0, limit - 1)
if #ids < limit then
  for _, id in ipairs(redis.call('ZRANGE', delayed, 0, limit - #ids - 1)) do
    ids[#ids + 1] = id
  end
end
local jobs = {}
for _, id in ipairs(ids) do
  local f = fields(job_prefix .. id)
  jobs[#jobs + 1] = {id, f[1], f[2], f[3], f[4], f[5]}
end
return jobs
