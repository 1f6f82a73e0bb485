-- Claims the clean-up of node ARGV[6] for claimer ARGV[7] for ARGV[8] ms: 'claimed' (also
-- when this claimer holds it already), 'held' by another claimer, or 'alive' when the node's
-- lease is still valid.
local node = ARGV[6]
local claimer = ARGV[7]
local lease = redis.call('ZSCORE', P .. ':nodes', node)
if lease and tonumber(lease) > NOW then return 'alive' end
local key = P .. ':cleanup:' .. node
if redis.call('SET', key, claimer, 'NX', 'PX', ARGV[8]) then return 'claimed' end
if redis.call('GET', key) == claimer then return 'claimed' end
return 'held'
