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
-- mpm, rlr, rlc (rate limit), la (lastActivity), rh (resume token hash, hex), acked, rk
-- (the replay list's name: the connection's first id), ep (the store epoch it was written
-- in).
--
-- What a delivery reads and writes of each connection is not in its record but in one row of
-- the user's rows HASH (`rows_key`, field the connection id, see `row_string`): its seq, the
-- bytes its replay list holds, rk, the node to deliver to, and how far into the user's log
-- its list is written (mu). `load` puts seq, rb (the replay bytes), mu and pend into the
-- record it returns, and `store` writes them (and the rest of the row, from the record) to
-- the row, never to the record's HASH.
--
-- A message to all of a user's connections writes nothing per connection: it is one entry of
-- the user's log (`user_log_key`, numbered by the user's offset `uo`), and each connection's
-- seq for it is its row's base plus that offset (`deliver_user`). A connection's list takes
-- the log's entries past its mu when something reads or writes the list (`catch_up`): a
-- delivery to it alone or to its session, an ack, an activation, a resume, a replay read.
-- The log keeps what any list could still keep (`push_user_log`).

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
-- The user's Detached connections, scored like the conns zset (by connectedAt), so that
-- admission finds the oldest Detached one without reading the user's records. `store` and
-- `unindex` keep it. Data written before this index existed lacks it: such a Detached
-- connection is not in it until its record is next stored, so eviction may take an older
-- attached one before it (the user's limit still holds), and nothing else reads it.
local function detached_key(user) return utag(user) .. ':dc' end
local function conn_key(user, id) return utag(user) .. ':c:' .. id end
local function replay_key(user, rk) return utag(user) .. ':r:' .. rk end
-- Where data written before the rows existed kept a replay list's bytes. Read for a
-- connection that has no row yet (see `load`), deleted with its list.
local function replay_bytes_key(rl) return rl .. ':b' end
-- The bytes a replay list holds, for `replay_buffer_bytes`: each entry counts as the frame it
-- renders (`{"type":"<kind>","seq":<seq>,<rest>`, 16 bytes more than `<seq>|<kind>|<rest>`).
local function frame_len(e) return #e + 16 end

-- The user's delivery rows: field connection id, value `=<base>|<node>|<rb>|<rk>|<mu>`,
-- where node is the node to deliver to ('' while Detached), rb the bytes its replay list
-- holds, mu the user offset its list is written up to, and base its seq at mu less mu: its
-- seq is base + the user's offset (`deliver_user` reads no more than base and node). Rows
-- written before the user log existed are `<seq>|<rb>|<rk>|<node>`, with mu 0.
local function rows_key(user) return utag(user) .. ':d' end
-- `mseq` (the seq at mu), `rb` and `mu` numbers.
local function row_string(mseq, rb, rk, node, mu)
  return '=' .. int(mseq - mu) .. '|' .. node .. '|' .. int(rb) .. '|' .. rk .. '|' .. int(mu)
end
-- mseq, rb, rk, node, mu of a row (nil when it does not parse).
local function parse_row(s)
  local base, node, rb, rk, mu = string.match(s, '^=(%-?%d+)|([^|]*)|(%d+)|([^|]*)|(%d+)$')
  if base then
    mu = tonumber(mu)
    return tonumber(base) + mu, tonumber(rb), rk, node, mu
  end
  local seq, rb0, rk0, node0 = string.match(s, '^(%d+)|(%d+)|([^|]*)|(.*)$')
  if not seq then return nil end
  return tonumber(seq), tonumber(rb0), rk0, node0, 0
end
-- The user's log of messages to all of its connections: `|<kind>|<rest>` each, the newest
-- numbered `uo` (a field of the user's counts), the oldest `uo - LLEN + 1`; `ub` counts its
-- bytes as `push_user_log` weighs them.
local function user_log_key(user) return utag(user) .. ':ul' end
-- The node a delivery to this record goes to: '' while Detached.
local function deliver_node(rec)
  if rec.state == 'detached' or not rec.node then return '' end
  return rec.node
end
local function session_conns_key(user, sid) return utag(user) .. ':sc:' .. sid end
local function user_counts_key(user) return utag(user) .. ':n' end
-- The number of the user's newest log entry (0 when none).
local function user_offset(user)
  return tonumber(redis.call('HGET', user_counts_key(user), 'uo')) or 0
end
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

-- A record with its seq and rb (replay bytes) from its row. A record stored before the rows
-- existed has its seq in its HASH and its bytes in their own key; its row is written when it
-- is next stored or delivered to.
--
-- rec.seq is the connection's seq now: its row's, plus `pend` user log entries its list has
-- not taken yet (`catch_up` writes them; `store` keeps them pending).
local function load(user, id)
  local rec = hgetall(conn_key(user, id))
  if not rec then return nil end
  local row = redis.call('HGET', rows_key(user), id)
  if row then
    local mseq, rb, _, _, mu = parse_row(row)
    if mseq then
      local pend = math.max(user_offset(user) - mu, 0)
      rec.seq = int(mseq + pend)
      rec.rb = int(rb)
      rec.mu = int(mu)
      rec.pend = int(pend)
    else
      -- One that does not parse is left as it is, for the record's decoding to name.
      rec.seq = row
      rec.rb = '0'
    end
  else
    rec.rb = redis.call('GET', replay_bytes_key(replay_key(user, rec.rk or ''))) or '0'
  end
  return rec
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
    if k ~= 'seq' and k ~= 'rb' and k ~= 'mu' and k ~= 'pend' then
      flat[#flat + 1] = k
      flat[#flat + 1] = v
    end
  end
  redis.call('DEL', key)
  redis.call('HSET', key, unpack(flat))
  -- A new record's list starts at the user's offset now. A seq that does not parse makes a
  -- row that does not either, for the record's decoding to name.
  local seq, rb = tonumber(rec.seq), tonumber(rec.rb) or 0
  local row
  if seq then
    local mu = tonumber(rec.mu) or user_offset(user)
    row = row_string(seq - (tonumber(rec.pend) or 0), rb, rec.rk, deliver_node(rec), mu)
  else
    row = (rec.seq or '') .. '|' .. int(rb) .. '|' .. rec.rk .. '|' .. deliver_node(rec)
  end
  redis.call('HSET', rows_key(user), rec.id, row)
  redis.call('ZADD', conns_key(user), rec.ca, rec.id)
  if rec.state == 'detached' then
    redis.call('ZADD', detached_key(user), rec.ca, rec.id)
  else
    redis.call('ZREM', detached_key(user), rec.id)
  end
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
  redis.call('HDEL', rows_key(user), rec.id)
  redis.call('ZREM', conns_key(user), rec.id)
  redis.call('ZREM', detached_key(user), rec.id)
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
    redis.call('DEL', user_counts_key(user), detached_key(user), user_log_key(user))
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

-- How many frames past `replay_buffer_messages` a replay list may hold before a delivery
-- trims it: then one LRANGE and one LTRIM take them all, instead of one LPOP per delivery
-- once the list is full. No reader sees them (`replay_view`).
-- (The events script passes no bounds.)
local REPLAY_SLACK = math.max(1, math.floor((REPLAY or 0) / 8))

-- The frames a replay list keeps, oldest first: its newest `replay_buffer_messages`, and of
-- those the newest that fit in `replay_buffer_bytes` (the newest always), as the embedded
-- store keeps them. The list may hold more: up to REPLAY_SLACK older frames (see `deliver`),
-- and more bytes after a restart with smaller bounds.
local function replay_view(rl)
  if REPLAY <= 0 then return {} end
  local es = redis.call('LRANGE', rl, -REPLAY, -1)
  local from, bytes = #es + 1, 0
  while from > 1 do
    local b = bytes + frame_len(es[from - 1])
    if b > REPLAY_BYTES and from <= #es then break end
    bytes = b
    from = from - 1
  end
  if from == 1 then return es end
  local kept = {}
  for i = from, #es do kept[#kept + 1] = es[i] end
  return kept
end

-- How many connections a delivery reads and writes per HMGET and HSET: Lua's `unpack` takes
-- at most about 8,000 values, and the HSET takes two per connection.
local ROWS_CHUNK = 2000

-- The score (connectedAt) of each of `ids` in the user's conns index, in their order (false
-- for one not in it): one ZMSCORE per ROWS_CHUNK ids, not one ZSCORE each.
local function conn_scores(user, ids)
  local out = {}
  for from = 1, #ids, ROWS_CHUNK do
    local to = math.min(from + ROWS_CHUNK - 1, #ids)
    local got = redis.call('ZMSCORE', conns_key(user), unpack(ids, from, to))
    for i = from, to do out[i] = got[i - from + 1] end
  end
  return out
end

-- Trims a replay list that holds `len` frames of `rb` bytes to its bounds; answers rb and
-- len after. Oldest first: past the bytes bound at once (the newest is always kept), past the
-- count only once it holds REPLAY_SLACK more. What goes is never in `replay_view`.
local function trim_list(rl, rb, len)
  if len > REPLAY + REPLAY_SLACK then
    local n = len - REPLAY
    for _, e in ipairs(redis.call('LRANGE', rl, 0, n - 1)) do rb = rb - frame_len(e) end
    redis.call('LTRIM', rl, n, -1)
    len = REPLAY
  end
  while len > 1 and rb > REPLAY_BYTES do
    local e = redis.call('LPOP', rl)
    if not e then break end
    rb = rb - frame_len(e)
    len = len - 1
  end
  return rb, len
end

-- Writes into replay list `rl` the user log entries past `mu` (up to the user's offset
-- `uo`), numbered on from `mseq`, and trims it; answers the seq and rb after. An entry the
-- log no longer holds still takes its seq: no list could keep it (`push_user_log`).
local function catch_up(user, rl, mseq, rb, mu, uo)
  local pend = uo - mu
  if pend <= 0 then return mseq, rb end
  if REPLAY <= 0 then
    if rb > 0 then
      redis.call('DEL', rl, replay_bytes_key(rl))
      rb = 0
    end
    return mseq + pend, rb
  end
  local n = math.min(pend, redis.call('LLEN', user_log_key(user)))
  if n > 0 then
    local first = mseq + pend - n + 1
    local items = {}
    for i, body in ipairs(redis.call('LRANGE', user_log_key(user), -n, -1)) do
      local e = int(first + i - 1) .. body
      items[i] = e
      rb = rb + frame_len(e)
    end
    local len = 0
    for from = 1, #items, 1000 do
      len = redis.call('RPUSH', rl, unpack(items, from, math.min(from + 999, #items)))
    end
    rb = trim_list(rl, rb, len)
  end
  return mseq + pend, rb
end

-- Brings a loaded record's replay list up to date with the user's log, and its row with it.
local function materialize(user, rec)
  local pend = tonumber(rec.pend) or 0
  local seq = tonumber(rec.seq)
  if pend <= 0 or not seq then return end
  local mu = tonumber(rec.mu)
  local _, rb = catch_up(user, replay_key(user, rec.rk), seq - pend, tonumber(rec.rb), mu,
    mu + pend)
  rec.rb = int(rb)
  rec.mu = int(mu + pend)
  rec.pend = '0'
  redis.call('HSET', rows_key(user), rec.id,
    row_string(seq, rb, rec.rk, deliver_node(rec), mu + pend))
end

-- Adds the assignment of seq `s` (a string) to connection `id` to node `node`'s Deliver
-- command: its `["<id>",<seq>]` pair, as parts for one concat at the end.
local function assign(nodes, order, node, id, s)
  local list = nodes[node]
  if not list then
    list = {n = 0}
    nodes[node] = list
    order[#order + 1] = node
  end
  local k = list.n
  list[k + 1] = id
  list[k + 2] = s
  list.n = k + 2
end

-- Publishes one Deliver command per node in `order`: `nodes[node]` holds the `id`, `seq`
-- strings of its assignments, `n` of them in all. `tail` is the command's JSON after its
-- assignments (`"kind":…,"rest":…}`).
local function publish_deliveries(user, nodes, order, tail)
  for _, node in ipairs(order) do
    local list = nodes[node]
    local parts, np = {}, 0
    for k = 1, list.n, 2 do
      parts[np + 1] = '["'
      parts[np + 2] = list[k]
      parts[np + 3] = '",'
      parts[np + 4] = list[k + 1]
      parts[np + 5] = '],'
      np = np + 5
    end
    -- No comma after the last pair.
    parts[np] = ']'
    redis.call('PUBLISH', P .. ':node:' .. node, '{"command":"deliver","user":' ..
      cjson.encode(user) .. ',"assignments":[' .. table.concat(parts) .. '],' .. tail)
  end
end

-- Gives each connection in `ids` (all `user`'s) its next seq for one frame, keeps the frame
-- in its replay list, and publishes one Deliver command per node that holds some of their
-- sockets. `tail` is the command's JSON after its assignments (`"kind":…,"rest":…}`). For a
-- message to a connection or a session; one to all of a user's goes to `deliver_user`.
--
-- Per connection only its replay entry is a call of its own (an RPUSH; an LPOP for a frame
-- past `replay_buffer_bytes`; once every REPLAY_SLACK deliveries to a full list, an LRANGE
-- and an LTRIM of the frames past `replay_buffer_messages`): the seqs, byte counts and nodes
-- are read with one HMGET of the user's rows and written back with one HSET, per ROWS_CHUNK
-- connections. A list behind the user's log takes its entries first (`catch_up`).
local function deliver(user, ids, kind, rest, tail)
  local nodes, order = {}, {}
  local stored, delivered, last = 0, 0, 0
  local rows = rows_key(user)
  local lists = utag(user) .. ':r:'
  local uo = user_offset(user)
  -- An entry is `<seq>` and this.
  local body = '|' .. kind .. '|' .. rest
  local body_len = #body + 16
  local cap = REPLAY + REPLAY_SLACK
  local call, fmt = redis.call, string.format
  for from = 1, #ids, ROWS_CHUNK do
    local to = math.min(from + ROWS_CHUNK - 1, #ids)
    local got = call('HMGET', rows, unpack(ids, from, to))
    local out, n_out = {}, 0
    for i = from, to do
      local id = ids[i]
      local row = got[i - from + 1]
      local seq, rb, rk, node, mu
      if row then
        seq, rb, rk, node, mu = parse_row(row)
      else
        -- No row: no record, or one stored before the rows existed.
        local rec = load(user, id)
        if rec then
          seq, rb, rk, node = tonumber(rec.seq), tonumber(rec.rb), rec.rk, deliver_node(rec)
          mu = uo
        end
      end
      if seq then
        if mu < uo then seq, rb = catch_up(user, lists .. rk, seq, rb, mu, uo) end
        seq = seq + 1
        local s = fmt('%d', seq)
        if REPLAY > 0 then
          local rl = lists .. rk
          -- RPUSH answers the list's new length: no LLEN.
          local len = call('RPUSH', rl, s .. body)
          rb = rb + #s + body_len
          if len > cap or rb > REPLAY_BYTES then rb = trim_list(rl, rb, len) end
        elseif rb > 0 then
          call('DEL', lists .. rk, replay_bytes_key(lists .. rk))
          rb = 0
        end
        out[n_out + 1] = id
        out[n_out + 2] = row_string(seq, rb, rk, node, uo)
        n_out = n_out + 2
        stored = stored + 1
        last = seq
        if node ~= '' then
          delivered = delivered + 1
          assign(nodes, order, node, id, s)
        end
      end
    end
    if n_out > 0 then call('HSET', rows, unpack(out, 1, n_out)) end
  end
  publish_deliveries(user, nodes, order, tail)
  return stored, delivered, last
end

-- Adds one entry to the user's log and answers its offset. The log lets go of its oldest
-- entry once no list could keep it: past REPLAY + REPLAY_SLACK entries (every list that
-- lacks it takes at least that many newer ones), or when the entries from it on weigh more
-- than `replay_buffer_bytes` at the least a frame of theirs weighs in a list (a seq of one
-- digit), so that any list would drop it for the newer.
local function push_user_log(user, body)
  local counts = user_counts_key(user)
  local uo = redis.call('HINCRBY', counts, 'uo', 1)
  if REPLAY <= 0 then return uo end
  local log = user_log_key(user)
  local len = redis.call('RPUSH', log, body)
  local ub = redis.call('HINCRBY', counts, 'ub', #body + 17)
  local dropped = 0
  while len > 1 and (len > REPLAY + REPLAY_SLACK or ub - dropped > REPLAY_BYTES) do
    local e = redis.call('LPOP', log)
    if not e then break end
    dropped = dropped + #e + 17
    len = len - 1
  end
  if dropped > 0 then redis.call('HINCRBY', counts, 'ub', -dropped) end
  return uo
end

-- A message to all of `user`'s connections: one entry of the user's log, and one Deliver
-- command per node with each socket's seq, the base of its row plus the entry's offset. One
-- HGETALL of the rows and one match per connection; nothing written per connection (its
-- list takes the entry later, `catch_up`). Answers nil, writing nothing, when some
-- connection has no row yet (a record stored before the rows existed): `deliver` serves it.
local function deliver_user(user, kind, rest, tail)
  local rows = rows_key(user)
  local conns = conns_key(user)
  local n = redis.call('ZCARD', conns)
  if n == 0 then return 0, 0, 0 end
  if redis.call('HLEN', rows) ~= n then return nil end
  local uo = push_user_log(user, '|' .. kind .. '|' .. rest)
  local newest = redis.call('ZRANGE', conns, -1, -1)[1]
  local nodes, order = {}, {}
  local stored, delivered, last = 0, 0, 0
  local match, fmt = string.match, string.format
  local flat = redis.call('HGETALL', rows)
  for i = 1, #flat, 2 do
    local id, row = flat[i], flat[i + 1]
    local base, node = match(row, '^=(%-?%d+)|([^|]*)|')
    local seq
    if base then
      seq = tonumber(base) + uo
    else
      local mseq, _, _, node0, mu = parse_row(row)
      if mseq then seq, node = mseq + uo - mu, node0 end
    end
    if seq then
      stored = stored + 1
      if id == newest then last = seq end
      if node ~= '' then
        delivered = delivered + 1
        assign(nodes, order, node, id, fmt('%d', seq))
      end
    end
  end
  publish_deliveries(user, nodes, order, tail)
  return stored, delivered, last
end

-- Publishes a Close command to the node that holds connection `id`'s socket.
local function publish_close(node, user, id, disconnect)
  redis.call('PUBLISH', P .. ':node:' .. node, '{"command":"close","user":' ..
    cjson.encode(user) .. ',"id":"' .. id .. '","disconnect":' .. disconnect .. '}')
end
