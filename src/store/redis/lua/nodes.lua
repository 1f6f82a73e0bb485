-- Cluster membership. ARGV[6] mode:
--   heartbeat: renews node ARGV[7]'s lease to now + ARGV[8] ms with its figures (ARGV[9]
--     listen, [10] startedAt, [11] connections);
--   live: every node whose lease is valid, with its figures;
--   expired: every node whose lease has run out.
local mode = ARGV[6]
local NODES = P .. ':nodes'
local function info_key(node) return P .. ':node:' .. node .. ':info' end

if mode == 'heartbeat' then
  local node = ARGV[7]
  redis.call('ZADD', NODES, int(NOW + tonumber(ARGV[8])), node)
  redis.call('HSET', info_key(node), 'listen', ARGV[9], 'startedAt', ARGV[10],
    'lastSeen', int(NOW), 'connections', ARGV[11])
  return '{}'
elseif mode == 'live' then
  local out = {}
  for _, node in ipairs(redis.call('ZRANGEBYSCORE', NODES, '(' .. int(NOW), '+inf')) do
    local info = hgetall(info_key(node)) or {}
    info.nodeId = node
    out[#out + 1] = info
  end
  return cjson.encode({nodes = out})
else
  local out = redis.call('ZRANGEBYSCORE', NODES, '-inf', int(NOW))
  return cjson.encode({nodes = out})
end
