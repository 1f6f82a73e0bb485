-- Appends connection events to the log (a stream capped at ARGV[6] entries) and publishes
-- each on connection:events, each with the next seq of the cluster's log.
--
-- ARGV[7...] groups of five: connection id, user id, event type, timestamp (ms), and the
-- event's JSON after its opening `{"seq":N,`.
local max = ARGV[6]
local STREAM = P .. ':events'
local CHANNEL = P .. ':connection:events'
local n = 0
for i = 7, #ARGV, 5 do
  local seq = redis.call('INCR', STREAM .. ':seq')
  local json = '{"seq":' .. int(seq) .. ',' .. ARGV[i + 4]
  redis.call('XADD', STREAM, 'MAXLEN', max, '*', 'j', json, 'c', ARGV[i], 'u', ARGV[i + 1],
    't', ARGV[i + 2], 'ms', ARGV[i + 3])
  redis.call('PUBLISH', CHANNEL, json)
  n = n + 1
end
return n
