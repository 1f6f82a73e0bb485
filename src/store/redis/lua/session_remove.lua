-- Removes a session (deleted, or expired: then only if it still is), publishes its event
-- once, removes every connection linked to it and publishes a Close for each socket.
--
-- ARGV[6] mode (delete | expire), [7] session id, [8] its user, [9] the channel (after the
-- prefix), [10] the event's JSON, [11] the close (a Disconnect as JSON).
local mode = ARGV[6]
local sid = ARGV[7]
local user = ARGV[8]
local locator = P .. ':sid:' .. sid
local key = utag(user) .. ':s:' .. sid
if redis.call('GET', locator) ~= user then
  redis.call('ZREM', P .. ':sessions:expiry', sid)
  return '{"error":"unknown"}'
end
local s = hgetall(key)
if not s then
  redis.call('DEL', locator)
  redis.call('ZREM', P .. ':sessions:expiry', sid)
  return '{"error":"unknown"}'
end
local expired = tonumber(s.exp) <= NOW
if mode == 'expire' and not expired then return '{"error":"alive"}' end
if mode == 'delete' and expired then return '{"error":"unknown"}' end

redis.call('DEL', key, locator)
redis.call('SREM', utag(user) .. ':sessions', sid)
redis.call('ZREM', P .. ':sessions:expiry', sid)
redis.call('PUBLISH', P .. ':' .. ARGV[9], ARGV[10])

local removed = {}
local set = session_conns_key(user, sid)
for _, id in ipairs(redis.call('SMEMBERS', set)) do
  local rec = load(user, id)
  if rec then
    remove_conn(user, rec)
    local node
    if live(rec) and rec.node ~= '' then
      node = rec.node
      publish_close(node, user, id, ARGV[11])
    end
    removed[#removed + 1] = {id = id, user = user, node = node}
  end
end
redis.call('DEL', set, session_owner_key(sid))
return cjson.encode({session = s, removed = removed})
