-- Makes an admitted connection Active on this node; returns its record and the kept frames
-- after ARGV[8].
--
-- ARGV[6] user, [7] connection id, [8] replay after this seq.
local user = ARGV[6]
local id = ARGV[7]
local after = tonumber(ARGV[8])

local rec = load(user, id)
if not rec then return '{}' end
materialize(user, rec)
local before = copy(rec)
if rec.node ~= '' and rec.node ~= NODE then
  redis.call('SREM', node_conns_key(rec.node), member(user, id))
end
rec.state = 'active'
rec.node = NODE
rec.da = nil
store(user, rec)
account(before, rec)

local replay = {}
for _, e in ipairs(replay_view(replay_key(user, rec.rk))) do
  if entry_seq(e) > after then replay[#replay + 1] = e end
end
return cjson.encode({rec = rec, replay = replay})
