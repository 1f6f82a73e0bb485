-- The client has everything up to ARGV[7]: its replay list lets go of it.
--
-- ARGV[6] connection id, [7] seq.
local id = ARGV[6]
local upto = tonumber(ARGV[7])
local user = owner(id)
if not user then return 0 end
local key = conn_key(user, id)
local f = redis.call('HMGET', key, 'seq', 'acked', 'rk')
if not f[1] then return 0 end
upto = math.min(upto, tonumber(f[1]))
if upto <= tonumber(f[2]) then return 0 end
redis.call('HSET', key, 'acked', int(upto))
local rl = replay_key(user, f[3])
local n = 0
while true do
  local first = redis.call('LINDEX', rl, 0)
  if not first or entry_seq(first) > upto then break end
  replay_pop(rl)
  n = n + 1
end
return n
