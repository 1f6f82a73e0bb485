-- Detaches up to ARGV[7] connections that node ARGV[6] held; returns them and how many are
-- left in its set. A record that names another node now (resumed elsewhere) is only taken out
-- of the set.
--
-- ARGV[6] node, [7] batch size.
local node = ARGV[6]
local batch = tonumber(ARGV[7])
local set = node_conns_key(node)
local detached = {}
for _, m in ipairs(redis.call('SRANDMEMBER', set, batch)) do
  redis.call('SREM', set, m)
  local user, id = split_member(m)
  local rec = user and load(user, id)
  if rec and live(rec) and rec.node == node then
    detach(user, rec)
    detached[#detached + 1] = {id = id, user = user}
  end
end
return cjson.encode({detached = detached, left = redis.call('SCARD', set)})
