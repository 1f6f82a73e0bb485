-- migrateConnection: the record moves to a new id; the old id stops existing. The replay
-- list keeps its name (the record's `rk`).
--
-- ARGV[6] old id, [7] new id.
local old_id = ARGV[6]
local new_id = ARGV[7]
if redis.call('EXISTS', locator_key(new_id)) == 1 then return '{"error":"exists"}' end
local user = owner(old_id)
if not user then return '{"error":"unknown"}' end
local rec = load(user, old_id)
if not rec then return '{"error":"unknown"}' end
unindex(user, rec)
rec.id = new_id
store(user, rec)
return cjson.encode({rec = rec})
