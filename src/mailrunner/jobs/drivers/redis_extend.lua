-- ARGV[4] = visibility (ms).
unqueue(id)
redis.call('ZADD', leased, now_ms() + tonumber(ARGV[4]), id)
return 1
