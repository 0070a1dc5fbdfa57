-- Returns the ids of the jobs deleted.
for _, id in ipairs(chosen) do
  redis.call('ZREM', failed, id)
  redis.call('DEL', job_prefix .. id)
end
return chosen
