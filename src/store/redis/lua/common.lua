-- Shared by every script of the Redis store: key names, record load and store, and the
-- counters that /v1/health, /v1/stats and max_total read.
--
-- ARGV[1] key prefix, ARGV[2] the caller's clock (ms; unused, see NOW), ARGV[3] resume grace
-- (ms), ARGV[4] replay buffer bounds (`<frames>:<bytes>`), ARGV[5] the calling node. A script's own arguments
-- start at ARGV[6].
--
-- A connection record is a HASH of strings: id, user, uj (the user as JSON), sid (session or
-- ''), state (authenticated | active | detached), node (holder of the socket, '' while
-- detached), ca (connectedAt), exp (expiresAt), da (detachedAt, absent unless detached), ip,
-- ua, cv (client version, absent when none), ctype (websocket | sse), perms (JSON array),
-- mpm, rlr, rlc (rate limit), la (lastActivity), rh (resume token hash, hex), seq, acked,
-- rk (the replay list's name: the connection's first id), ep (the store epoch it was
-- written in).

local P = ARGV[1]
-- Now, by Redis's clock: leases, detach times and expiries compare one clock, whatever the
-- nodes' clocks say.
local TIME = redis.call('TIME')
local NOW = tonumber(TIME[1]) * 1000 + math.floor(tonumber(TIME[2]) / 1000)
local GRACE = tonumber(ARGV[3])
local REPLAY_FRAMES, REPLAY_BYTES = string.match(ARGV[4], '^(%d+):(%d+)$')
local REPLAY = tonumber(REPLAY_FRAMES)
REPLAY_BYTES = tonumber(REPLAY_BYTES)
local NODE = ARGV[5]

-- Integers as Redis arguments: Lua's own number formatting would switch to exponents.
local function int(x)
  return string.format('%d', x)
end

local function utag(user) return P .. ':{u:' .. user .. '}' end
local function conns_key(user) return utag(user) .. ':conns' end
local function conn_key(user, id) return utag(user) .. ':c:' .. id end
local function replay_key(user, rk) return utag(user) .. ':r:' .. rk end
-- The bytes a replay list holds, for `replay_buffer_bytes`: each entry counts as the frame it
-- renders (`{"type":"<kind>","seq":<seq>,<rest>`, 16 bytes more than `<seq>|<kind>|<rest>`).
local function replay_bytes_key(rl) return rl .. ':b' end
local function frame_len(e) return #e + 16 end

-- Drops a replay list's oldest entry, and its bytes from the count.
local function replay_pop(rl)
  local e = redis.call('LPOP', rl)
  if e then redis.call('DECRBY', replay_bytes_key(rl), frame_len(e)) end
  return e
end
local function session_conns_key(user, sid) return utag(user) .. ':sc:' .. sid end
local function user_counts_key(user) return utag(user) .. ':n' end
local function locator_key(id) return P .. ':cid:' .. id end
local function node_conns_key(node) return P .. ':node:' .. node .. ':conns' end
-- Whose connections a session's are (the session itself may live in no store at all).
local function session_owner_key(sid) return P .. ':sc:' .. sid end
local function session_owner(sid)
  local u = redis.call('GET', session_owner_key(sid))
  if not u then return nil end
  return u
end
local function member(user, id) return user .. '\0' .. id end
local STATS = P .. ':stats'
local TOTAL = P .. ':total'
local EXPIRY = P .. ':expiry'
local USERS = P .. ':users'

local function split_member(m)
  local at = string.find(m, '\0', 1, true)
  if not at then return nil, nil end
  return string.sub(m, 1, at - 1), string.sub(m, at + 1)
end

local function hgetall(key)
  local flat = redis.call('HGETALL', key)
  if #flat == 0 then return nil end
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  return t
end

local function copy(t)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  return c
end

local function load(user, id)
  return hgetall(conn_key(user, id))
end

-- The user a connection id belongs to, from its locator.
local function owner(id)
  local u = redis.call('GET', locator_key(id))
  if not u then return nil end
  return u
end

local function live(rec) return rec.state ~= 'detached' end

-- When the sweeper must look at a record: an attached one at its expiry, a detached one when
-- its resume grace ends.
local function due(rec)
  local exp = tonumber(rec.exp)
  if rec.state == 'detached' then
    local da = tonumber(rec.da) or NOW
    return math.min(da, exp) + GRACE
  end
  return exp
end

local function bump(key, field, d)
  local n = redis.call('HINCRBY', key, field, d)
  if n == 0 then redis.call('HDEL', key, field) end
  return n
end

-- Keeps the counters right for a record that changes from `before` to `after` (either may be
-- nil: created, removed).
local function account(before, after)
  local function apply(r, d)
    local user = r.user
    bump(STATS, 'state:' .. r.state, d)
    bump(STATS, 'type:' .. r.ctype, d)
    if live(r) then
      redis.call('INCRBY', TOTAL, d)
      bump(STATS, 'live:type:' .. r.ctype, d)
      bump(STATS, 'live:ver:' .. (r.cv or 'unknown'), d)
      local n = bump(user_counts_key(user), 'live', d)
      if (d > 0 and n == 1) or (d < 0 and n == 0) then bump(STATS, 'users:live', d) end
    end
    if r.state == 'active' then
      redis.call('HINCRBY', STATS, 'active:since', int(d * tonumber(r.ca)))
      local n = bump(user_counts_key(user), 'active', d)
      if (d > 0 and n == 1) or (d < 0 and n == 0) then bump(STATS, 'users:active', d) end
    end
  end
  if before then apply(before, -1) end
  if after then apply(after, 1) end
end

-- Writes a record and every index that names it (all idempotent). The caller takes old index
-- entries away when an id or a node changes, and calls `account`.
local function store(user, rec)
  local key = conn_key(user, rec.id)
  local flat = {}
  for k, v in pairs(rec) do
    flat[#flat + 1] = k
    flat[#flat + 1] = v
  end
  redis.call('DEL', key)
  redis.call('HSET', key, unpack(flat))
  redis.call('ZADD', conns_key(user), rec.ca, rec.id)
  redis.call('ZADD', USERS, 0, user)
  redis.call('SET', locator_key(rec.id), user)
  if rec.node ~= '' then redis.call('SADD', node_conns_key(rec.node), member(user, rec.id)) end
  if rec.sid ~= '' then
    redis.call('SADD', session_conns_key(user, rec.sid), rec.id)
    redis.call('SET', session_owner_key(rec.sid), user)
  end
  redis.call('ZADD', EXPIRY, int(due(rec)), member(user, rec.id))
end

-- Takes away the record and every index entry that names it, but not its replay list and not
-- the counters.
local function unindex(user, rec)
  redis.call('DEL', conn_key(user, rec.id))
  redis.call('ZREM', conns_key(user), rec.id)
  redis.call('DEL', locator_key(rec.id))
  if rec.node ~= '' then redis.call('SREM', node_conns_key(rec.node), member(user, rec.id)) end
  if rec.sid ~= '' then
    local set = session_conns_key(user, rec.sid)
    redis.call('SREM', set, rec.id)
    if redis.call('SCARD', set) == 0 and session_owner(rec.sid) == user then
      redis.call('DEL', session_owner_key(rec.sid))
    end
  end
  redis.call('ZREM', EXPIRY, member(user, rec.id))
end

local function forget_user_if_empty(user)
  if redis.call('ZCARD', conns_key(user)) == 0 then
    redis.call('ZREM', USERS, user)
    redis.call('DEL', user_counts_key(user))
  end
end

-- Removes a connection for good: record, indexes, replay list, counters.
local function remove_conn(user, rec)
  unindex(user, rec)
  redis.call('DEL', replay_key(user, rec.rk), replay_bytes_key(replay_key(user, rec.rk)))
  account(rec, nil)
  forget_user_if_empty(user)
end

-- Makes an attached record Detached now.
local function detach(user, rec)
  local before = copy(rec)
  if rec.node ~= '' then redis.call('SREM', node_conns_key(rec.node), member(user, rec.id)) end
  rec.state = 'detached'
  rec.node = ''
  rec.da = int(NOW)
  store(user, rec)
  account(before, rec)
end

-- The seq of a replay entry (`<seq>|<kind>|<rest>`).
local function entry_seq(e)
  return tonumber(string.match(e, '^(%d+)|'))
end

-- Gives each connection in `ids` (all `user`'s) its next seq for one frame, keeps the frame
-- in its replay list, and publishes one Deliver command per node that holds some of their
-- sockets. `tail` is the command's JSON after its assignments (`"kind":…,"rest":…}`).
local function deliver(user, ids, kind, rest, tail)
  local nodes, order = {}, {}
  local stored, delivered, last = 0, 0, 0
  for _, id in ipairs(ids) do
    local key = conn_key(user, id)
    local f = redis.call('HMGET', key, 'state', 'node', 'rk')
    if f[1] then
      local seq = redis.call('HINCRBY', key, 'seq', 1)
      local rl = replay_key(user, f[3])
      if REPLAY > 0 then
        local entry = int(seq) .. '|' .. kind .. '|' .. rest
        redis.call('RPUSH', rl, entry)
        local bytes = redis.call('INCRBY', replay_bytes_key(rl), frame_len(entry))
        -- Oldest first, past either bound; the newest is always kept.
        local len = redis.call('LLEN', rl)
        while len > 1 and (len > REPLAY or bytes > REPLAY_BYTES) do
          local e = replay_pop(rl)
          if not e then break end
          bytes = bytes - frame_len(e)
          len = len - 1
        end
      else
        redis.call('DEL', rl, replay_bytes_key(rl))
      end
      stored = stored + 1
      last = seq
      if f[1] ~= 'detached' and f[2] and f[2] ~= '' then
        delivered = delivered + 1
        if not nodes[f[2]] then
          nodes[f[2]] = {}
          order[#order + 1] = f[2]
        end
        local list = nodes[f[2]]
        list[#list + 1] = '["' .. id .. '",' .. int(seq) .. ']'
      end
    end
  end
  for _, node in ipairs(order) do
    redis.call('PUBLISH', P .. ':node:' .. node, '{"command":"deliver","user":' ..
      cjson.encode(user) .. ',"assignments":[' .. table.concat(nodes[node], ',') .. '],' .. tail)
  end
  return stored, delivered, last
end

-- Publishes a Close command to the node that holds connection `id`'s socket.
local function publish_close(node, user, id, disconnect)
  redis.call('PUBLISH', P .. ':node:' .. node, '{"command":"close","user":' ..
    cjson.encode(user) .. ',"id":"' .. id .. '","disconnect":' .. disconnect .. '}')
end
