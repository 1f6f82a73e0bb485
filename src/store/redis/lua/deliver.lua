-- One delivery: each target connection's next seq, the frame kept for its replay, one
-- Deliver command per node that holds target sockets.
--
-- ARGV[6] mode (conn | user | session), [7] connection id, user id or session id, [8] the
-- connection to leave out ('' for none), [9] frame kind, [10] the frame's rest,
-- [11] the Deliver command's JSON after its assignments.
local mode = ARGV[6]
local what = ARGV[7]
local except = ARGV[8]

local user
local ids = {}
if mode == 'conn' then
  user = owner(what)
  ids = {what}
elseif mode == 'user' then
  user = what
  local stored, delivered, last = deliver_user(user, ARGV[9], ARGV[10], ARGV[11])
  if stored then
    return cjson.encode({stored = stored, delivered = delivered, seq = last})
  end
  ids = redis.call('ZRANGE', conns_key(user), 0, -1)
else
  user = session_owner(what)
  if user then
    -- In connection order, so a fan-out is assigned as the embedded store assigns it.
    local members = redis.call('SMEMBERS', session_conns_key(user, what))
    local scores = conn_scores(user, members)
    local ca = {}
    for i, id in ipairs(members) do
      local s = scores[i]
      if s then
        ca[id] = tonumber(s)
        if id ~= except then ids[#ids + 1] = id end
      end
    end
    table.sort(ids, function(a, b)
      if ca[a] == ca[b] then return a < b end
      return ca[a] < ca[b]
    end)
  end
end
if not user then return '{"stored":0,"delivered":0,"seq":0}' end
local stored, delivered, last = deliver(user, ids, ARGV[9], ARGV[10], ARGV[11])
return cjson.encode({stored = stored, delivered = delivered, seq = last})
