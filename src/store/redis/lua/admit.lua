-- Admission of one connection of one user: a resume when asked and allowed, else a fresh
-- record within max_total and max_per_user (the user's oldest goes, Detached ones first).
-- It reads no record of the user but the one resumed and those evicted: O(log n) in the
-- user's connections.
--
-- ARGV[6] user, [7] the store's epoch, [8] new connection id, [9] the new record's fields
-- (JSON object of strings), [10] the new resume token's hash, [11] max_per_user,
-- [12] max_total, [13] TTL (ms), [14] connection id to resume ('' for none), [15] the
-- presented token's hash, [16] '1' when the token is waived, [17] the client's lastSeq
-- ('' for none).
local user = ARGV[6]
local epoch = ARGV[7]
local new_id = ARGV[8]
local fresh = cjson.decode(ARGV[9])
local hash = ARGV[10]
local max_per_user = tonumber(ARGV[11])
local max_total = tonumber(ARGV[12])
local ttl = tonumber(ARGV[13])
local old_id = ARGV[14]
local token_hash = ARGV[15]
local trusted = ARGV[16] == '1'
local last_seq = tonumber(ARGV[17])

local current = redis.call('GET', P .. ':epoch')
if current ~= epoch then
  return cjson.encode({refused = 'epoch', found = current or ''})
end

-- How many connections the user has: its conns zset, not its records, so that admission
-- costs O(log n) in the user's connections whatever their number. An index entry whose
-- record is gone (which no script leaves behind) counts until it is met as a victim below.
local count = redis.call('ZCARD', conns_key(user))

local closing = {}
local resume_error
local old
if old_id ~= '' then
  local who = owner(old_id)
  if who and who ~= user then return cjson.encode({refused = 'foreign'}) end
  local rec = who and load(user, old_id)
  if not rec then
    resume_error = 'unknown connection'
  elseif not trusted and rec.rh ~= token_hash then
    resume_error = 'invalid resume token'
  elseif rec.state == 'detached' and tonumber(rec.da) + GRACE <= NOW then
    resume_error = 'resume grace period over'
  elseif rec.state == 'authenticated' then
    resume_error = 'connection is still being set up'
  else
    old = rec
  end
end

if old then
  materialize(user, old)
  local seq = tonumber(old.seq)
  local rl = replay_key(user, old.rk)
  -- The oldest frame kept: the list's first, unless it holds more than it keeps.
  local first
  if REPLAY > 0 and tonumber(old.rb) <= REPLAY_BYTES and redis.call('LLEN', rl) <= REPLAY then
    first = redis.call('LINDEX', rl, 0)
  else
    first = replay_view(rl)[1]
  end
  local first_kept = (first and entry_seq(first)) or (seq + 1)
  local notes = {}
  local after
  if old.ep ~= epoch then
    notes[#notes + 1] = 'the store lost data after this connection was stored: messages may be missing'
  end
  if last_seq and last_seq > seq then
    -- The client has seqs the store does not: the store lost writes. Carry on from the
    -- client's, so that no seq is ever handed out twice.
    notes[#notes + 1] = 'the store lost messages: lastSeq ' .. int(last_seq) ..
      ' is above the stored seq ' .. int(seq) .. '; messages may be missing'
    old.seq = int(last_seq)
    after = last_seq
  elseif not last_seq then
    after = math.max(tonumber(old.acked), first_kept - 1)
  elseif last_seq + 1 < first_kept then
    after = first_kept - 1
    notes[#notes + 1] = 'messages lost: the oldest kept seq is ' .. int(first_kept) ..
      ', lastSeq was ' .. int(last_seq)
  else
    after = last_seq
  end
  if #notes > 0 then resume_error = table.concat(notes, '; ') end

  local moved = copy(old)
  unindex(user, old)
  moved.id = new_id
  moved.state = 'authenticated'
  moved.da = nil
  moved.rh = hash
  moved.exp = int(math.max(tonumber(old.exp), NOW + ttl))
  moved.la = int(NOW)
  moved.node = NODE
  moved.ep = epoch
  store(user, moved)
  account(old, moved)
  if live(old) and old.node ~= '' then
    closing[#closing + 1] = {id = old_id, node = old.node, code = 4507}
  end
  return cjson.encode({
    id = new_id, resumed = true, previous = old_id, resume_error = resume_error,
    replay_after = after, closing = closing,
  })
end

local total = tonumber(redis.call('GET', TOTAL) or '0')
if total >= max_total then
  return cjson.encode({refused = 'full'})
end

-- The user's oldest Detached connection, else its oldest: the next to evict. Index entries
-- whose record is gone are purged when met here, and no longer counted.
local function victim()
  while true do
    local id = redis.call('ZRANGE', detached_key(user), 0, 0)[1]
    local detached = id ~= nil
    if not detached then id = redis.call('ZRANGE', conns_key(user), 0, 0)[1] end
    if not id then return nil end
    local rec = load(user, id)
    if rec and (rec.state == 'detached' or not detached) then return rec end
    redis.call('ZREM', detached_key(user), id)
    if not rec then
      if redis.call('ZREM', conns_key(user), id) == 1 then count = count - 1 end
      if redis.call('GET', locator_key(id)) == user then redis.call('DEL', locator_key(id)) end
    end
  end
end

local evicted = {}
while count > 0 and count >= max_per_user do
  local v = victim()
  if not v then break end
  remove_conn(user, v)
  count = count - 1
  evicted[#evicted + 1] = v.id
  if live(v) and v.node ~= '' then
    closing[#closing + 1] = {id = v.id, node = v.node, code = 4505}
  end
end

local rec = fresh
rec.id = new_id
rec.user = user
rec.state = 'authenticated'
rec.node = NODE
rec.exp = int(NOW + ttl)
rec.rh = hash
rec.seq = '0'
rec.acked = '0'
rec.rk = new_id
rec.ep = epoch
store(user, rec)
account(nil, rec)
return cjson.encode({
  id = new_id, resumed = false, resume_error = resume_error, replay_after = 0,
  closing = closing, evicted = evicted,
})
