-- Removes connections now: one by id, every one of a user, or every one linked to a
-- session. Returns each removed one with the node that held its socket, if any.
--
-- ARGV[6] mode (id | user | session), [7] the connection id, user id or session id.
local mode = ARGV[6]
local what = ARGV[7]

local user
local ids = {}
if mode == 'id' then
  user = owner(what)
  ids = {what}
elseif mode == 'user' then
  user = what
  ids = redis.call('ZRANGE', conns_key(user), 0, -1)
else
  user = session_owner(what)
  if user then ids = redis.call('SMEMBERS', session_conns_key(user, what)) end
end
if not user then return '{"removed":[]}' end

local removed = {}
for _, id in ipairs(ids) do
  local rec = load(user, id)
  if rec then
    remove_conn(user, rec)
    local node
    if live(rec) and rec.node ~= '' then node = rec.node end
    removed[#removed + 1] = {id = id, user = user, node = node}
  elseif mode == 'session' then
    redis.call('SREM', session_conns_key(user, what), id)
  end
end
return cjson.encode({removed = removed})
