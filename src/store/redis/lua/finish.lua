-- The socket of a connection on this node is gone: remove it, detach it, or keep it, with
-- the activity its task kept.
--
-- ARGV[6] connection id, [7] fate (remove | detach | keep), [8] activity as JSON
-- ({la, rlr, rlc} strings) or '', [9] the end's token (one per end, the same for each of
-- its tries), [10] how long (ms) the answer is kept for a retry with the same token.
--
-- Idempotent: a retry of an end whose earlier try ran but whose answer was lost (a timeout)
-- changes nothing more and gets the same answer, so the end's event is logged once.
local id = ARGV[6]
local fate = ARGV[7]
local token = ARGV[9]
local memo = P .. ':fin:' .. id
local done = redis.call('GET', memo)
if done then
  local at = string.find(done, '|', 1, true)
  if at and string.sub(done, 1, at - 1) == token then return string.sub(done, at + 1) end
end
local function answer(result)
  local json = cjson.encode(result)
  redis.call('SET', memo, token .. '|' .. json, 'PX', ARGV[10])
  return json
end
local user = owner(id)
if not user then return '{}' end
local rec = load(user, id)
if not rec then return '{}' end
if ARGV[8] ~= '' then
  local a = cjson.decode(ARGV[8])
  rec.la = a.la
  rec.rlr = a.rlr
  rec.rlc = a.rlc
end
if fate == 'remove' then
  remove_conn(user, rec)
  return answer({done = 'removed', user = user})
end
if fate == 'detach' and live(rec) and (rec.node == NODE or rec.node == '') then
  detach(user, rec)
  return answer({done = 'detached', user = user})
end
-- Kept (or detached already, or its socket is another node's now): the activity only.
store(user, rec)
return cjson.encode({done = 'kept', user = user})
