-- Reads sessions: ARGV[6] mode one (ARGV[7] a session id; expired ones too, the caller
-- decides) or user (ARGV[7] a user id: every session of the user, purging index entries
-- whose session is gone).
local mode = ARGV[6]
local what = ARGV[7]
if mode == 'one' then
  local user = redis.call('GET', P .. ':sid:' .. what)
  if not user then return '{}' end
  local s = hgetall(utag(user) .. ':s:' .. what)
  if not s then return '{}' end
  return cjson.encode({session = s})
end
local set = utag(what) .. ':sessions'
local out = {}
for _, sid in ipairs(redis.call('SMEMBERS', set)) do
  local s = hgetall(utag(what) .. ':s:' .. sid)
  if s then out[#out + 1] = s else redis.call('SREM', set, sid) end
end
return cjson.encode({sessions = out})
