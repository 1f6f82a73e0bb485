-- The client has everything up to ARGV[7]: its replay list lets go of it.
--
-- ARGV[6] connection id, [7] seq.
local id = ARGV[6]
local upto = tonumber(ARGV[7])
local user = owner(id)
if not user then return 0 end
local rec = load(user, id)
if not rec then return 0 end
materialize(user, rec)
upto = math.min(upto, tonumber(rec.seq))
if upto <= tonumber(rec.acked) then return 0 end
redis.call('HSET', conn_key(user, id), 'acked', int(upto))
local rl = replay_key(user, rec.rk)
local rb = tonumber(rec.rb)
local n = 0
while true do
  local first = redis.call('LINDEX', rl, 0)
  if not first or entry_seq(first) > upto then break end
  redis.call('LPOP', rl)
  rb = rb - frame_len(first)
  n = n + 1
end
redis.call('HSET', rows_key(user), id,
  row_string(tonumber(rec.seq), math.max(rb, 0), rec.rk, deliver_node(rec),
    tonumber(rec.mu) or user_offset(user)))
return n
