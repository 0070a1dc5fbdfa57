-- Lease scripts: ARGV = prefix, id, token, ...; a token that is not the job's current lease
-- (acked, nacked, released, or leased again after expiry) makes them a no-op returning 0.
local id = ARGV[2]
local key = job_prefix .. id
if redis.call('HGET', key, 'token') ~= ARGV[3] then return 0 end
