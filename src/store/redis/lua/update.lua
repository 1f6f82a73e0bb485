-- Changes fields of a record that exists (metadata, expiry, activity); never creates one.
--
-- ARGV[6] connection id, [7] fields to set (JSON object of strings), [8] fields to remove
-- (JSON array).
local id = ARGV[6]
local user = owner(id)
if not user then return '{}' end
local rec = load(user, id)
if not rec then return '{}' end
local before = copy(rec)
for k, v in pairs(cjson.decode(ARGV[7])) do rec[k] = v end
for _, k in ipairs(cjson.decode(ARGV[8])) do rec[k] = nil end
store(user, rec)
account(before, rec)
return cjson.encode({rec = rec})
