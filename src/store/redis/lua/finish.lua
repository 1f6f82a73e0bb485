-- The socket of a connection on this node is gone: remove it, detach it, or keep it, with
-- the activity its task kept.
--
-- ARGV[6] connection id, [7] fate (remove | detach | keep), [8] activity as JSON
-- ({la, rlr, rlc} strings) or ''.
local id = ARGV[6]
local fate = ARGV[7]
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
  return cjson.encode({done = 'removed', user = user})
end
if fate == 'detach' and live(rec) and (rec.node == NODE or rec.node == '') then
  detach(user, rec)
  return cjson.encode({done = 'detached', user = user})
end
-- Kept (or detached already, or its socket is another node's now): the activity only.
store(user, rec)
return cjson.encode({done = 'kept', user = user})
