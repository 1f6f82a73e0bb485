-- A node's clean-up is done (or it left): its lease, figures and connection set go, unless
-- its set still holds connections.
--
-- ARGV[6] node.
local node = ARGV[6]
if redis.call('SCARD', node_conns_key(node)) > 0 then return 0 end
redis.call('ZREM', P .. ':nodes', node)
redis.call('DEL', P .. ':node:' .. node .. ':info', node_conns_key(node))
return 1
