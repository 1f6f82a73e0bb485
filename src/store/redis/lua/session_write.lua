-- Creates or updates a session, publishes its bus event, and (for an update) delivers
-- `session.updated` to the session's connections but the origin, all in one step.
--
-- ARGV[6] mode (create | update), [7] session id, [8] user, [9] fields to set (JSON object
-- of strings), [10] for an update the version it was read at (for a create, the most live
-- sessions the user may have), [11] the channel (after the
-- prefix), [12] the event's JSON; for an update also [13] the connection to leave out,
-- [14] frame kind, [15] frame rest, [16] the Deliver command's JSON after its assignments.
local mode = ARGV[6]
local sid = ARGV[7]
local user = ARGV[8]
local fields = cjson.decode(ARGV[9])
local key = utag(user) .. ':s:' .. sid

local s
if mode == 'create' then
  -- ARGV[10]: max_sessions_per_user (sessions expired but not yet swept still count).
  if redis.call('SCARD', utag(user) .. ':sessions') >= tonumber(ARGV[10]) then
    return '{"error":"too_many"}'
  end
  s = {id = sid, user = user, v = '0'}
else
  if redis.call('GET', P .. ':sid:' .. sid) ~= user then return '{"error":"unknown"}' end
  s = hgetall(key)
  if not s or tonumber(s.exp) <= NOW then return '{"error":"unknown"}' end
  if s.v ~= ARGV[10] then return '{"error":"conflict"}' end
end
for k, v in pairs(fields) do s[k] = v end
s.v = int(tonumber(s.v) + 1)
local flat = {}
for k, v in pairs(s) do
  flat[#flat + 1] = k
  flat[#flat + 1] = v
end
redis.call('HSET', key, unpack(flat))
redis.call('SADD', utag(user) .. ':sessions', sid)
redis.call('SET', P .. ':sid:' .. sid, user)
redis.call('ZADD', P .. ':sessions:expiry', s.exp, sid)
redis.call('PUBLISH', P .. ':' .. ARGV[11], ARGV[12])

local stored = 0
if mode == 'update' then
  local except = ARGV[13]
  local ids = {}
  local ca = {}
  local members = redis.call('SMEMBERS', session_conns_key(user, sid))
  local scores = conn_scores(user, members)
  for i, id in ipairs(members) do
    local score = scores[i]
    if score and id ~= except then
      ca[id] = tonumber(score)
      ids[#ids + 1] = id
    end
  end
  table.sort(ids, function(a, b)
    if ca[a] == ca[b] then return a < b end
    return ca[a] < ca[b]
  end)
  stored = deliver(user, ids, ARGV[14], ARGV[15], ARGV[16])
end
return cjson.encode({session = s, stored = stored})
