for _, zset in ipairs({queue, delayed, leased, failed}) do
  for _, id in ipairs(redis.call('ZRANGE', zset, 0, -1)) do
    redis.call('DEL', job_prefix .. id)
  end
end
redis.call('DEL', queue, delayed, leased, failed, seq)
return 1
