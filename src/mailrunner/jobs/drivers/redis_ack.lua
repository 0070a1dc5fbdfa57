unqueue(id)
redis.call('DEL', key)
return 1
