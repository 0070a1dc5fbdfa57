unqueue(id)
redis.call('HINCRBY', key, 'attempts', -1)
redis.call('HDEL', key, 'token')
redis.call('ZADD', queue, redis.call('HGET', key, 'rank'), id)
return 1
