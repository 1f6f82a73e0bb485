-- Reads: one connection (by id), a user's connections (oldest first), a connection's kept
-- frames after a seq (its list first takes what the user's log holds for it, the one write),
-- or the connection ids linked to a session.
--
-- ARGV[6] mode (conn | user | replay | session), [7] connection, user or session id,
-- [8] for replay, the seq after which frames are wanted.
local mode = ARGV[6]
local what = ARGV[7]

if mode == 'conn' then
  local user = owner(what)
  if not user then return '{}' end
  local rec = load(user, what)
  if not rec then return '{}' end
  return cjson.encode({rec = rec})
elseif mode == 'user' then
  local recs = {}
  for _, id in ipairs(redis.call('ZRANGE', conns_key(what), 0, -1)) do
    local rec = load(what, id)
    if rec then recs[#recs + 1] = rec end
  end
  return cjson.encode({recs = recs})
elseif mode == 'replay' then
  local user = owner(what)
  if not user then return '{}' end
  local rec = load(user, what)
  if not rec or not rec.rk then return '{}' end
  -- The one write of this script: the list takes what the user's log holds for it.
  materialize(user, rec)
  local after = tonumber(ARGV[8])
  local replay = {}
  for _, e in ipairs(replay_view(replay_key(user, rec.rk))) do
    if entry_seq(e) > after then replay[#replay + 1] = e end
  end
  return cjson.encode({replay = replay})
else
  local user = session_owner(what)
  if not user then return '{"ids":[]}' end
  local ids = {}
  local members = redis.call('SMEMBERS', session_conns_key(user, what))
  local scores = conn_scores(user, members)
  for i, id in ipairs(members) do
    local s = scores[i]
    if s then ids[#ids + 1] = {id, s} end
  end
  table.sort(ids, function(a, b)
    if a[2] == b[2] then return a[1] < b[1] end
    return tonumber(a[2]) < tonumber(b[2])
  end)
  local out = {}
  for i, x in ipairs(ids) do out[i] = x[1] end
  return cjson.encode({ids = out})
end
