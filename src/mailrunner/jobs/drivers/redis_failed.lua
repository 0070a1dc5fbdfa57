-- ARGV[2] = limit. Returns {id, name, payload, headers, priority, auto_ack, error, attempts,
-- failed_at} per job, oldest failure first.
local jobs = {}
for _, id in ipairs(redis.call('ZRANGE', failed, 0, tonumber(ARGV[2]) - 1)) do
  local f = fields(job_prefix .. id, 'error', 'attempts', 'failed_at')
  jobs[#jobs + 1] = {id, f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8]}
end
return jobs
