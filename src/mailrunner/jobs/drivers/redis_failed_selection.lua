-- ARGV[2] = 'all' or 'ids', then the ids; `chosen` = the failed ones among them, each once.
local chosen = {}
if ARGV[2] == 'all' then
  chosen = redis.call('ZRANGE', failed, 0, -1)
else
  local seen = {}
  for i = 3, #ARGV do
    local id = ARGV[i]
    if not seen[id] and redis.call('ZSCORE', failed, id) then
      chosen[#chosen + 1] = id
      seen[id] = true
    end
  end
end
