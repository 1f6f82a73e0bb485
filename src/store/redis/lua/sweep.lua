-- The records due now (at most ARGV[6]): an Active one past its expiry is returned for its
-- socket to be closed (and looked at again in ARGV[7] ms), a Detached one past its grace is
-- removed. Whoever runs this first does the work: it happens once per cluster.
--
-- ARGV[6] batch size, [7] retry delay (ms).
local batch = tonumber(ARGV[6])
local retry = tonumber(ARGV[7])
local expired, removed = {}, {}
local due_now = redis.call('ZRANGEBYSCORE', EXPIRY, '-inf', int(NOW), 'LIMIT', 0, batch)
for _, m in ipairs(due_now) do
  local user, id = split_member(m)
  local rec = user and load(user, id)
  if not rec then
    redis.call('ZREM', EXPIRY, m)
  elseif rec.state == 'active' and tonumber(rec.exp) <= NOW then
    expired[#expired + 1] = {id = id, user = user, node = rec.node}
    redis.call('ZADD', EXPIRY, int(NOW + retry), m)
  elseif rec.state == 'detached' and due(rec) <= NOW then
    remove_conn(user, rec)
    removed[#removed + 1] = {id = id, user = user}
  else
    redis.call('ZADD', EXPIRY, int(math.max(due(rec), NOW + retry)), m)
  end
end
return cjson.encode({expired = expired, removed = removed, seen = #due_now})
