local now = now_ms()
local due_delayed = redis.call('ZCOUNT', delayed, '-inf', now)
local expired = redis.call('ZCOUNT', leased, '-inf', now)
return {
  redis.call('ZCARD', queue) + due_delayed + expired,
  redis.call('ZCARD', delayed) - due_delayed,
  redis.call('ZCARD', leased) - expired,
  redis.call('ZCARD', failed),
}
