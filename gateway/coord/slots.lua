-- Engine slots shared by gateway replicas: one script, so every decision is atomic in Redis.
-- ARGV: prefix, command, lease_ms, then the command's arguments. Times are Redis TIME in ms (one clock for all).
--
-- Keys (P = prefix): P:engines (set of engine URLs), P:engine:<url> (hash: cap, down, cool, wknown, wgpt, wsov,
-- flavor, version, error, probed, fence), P:lease:<url> (zset: lease token -> expiry), P:queue (zset: waiter id ->
-- score; interactive before batch, FIFO by a global sequence, retries at the front), P:waiter:<id> (hash),
-- P:replica:<id> (alive while it heartbeats), P:seq, P:rr, P:boot, P:seen, P:hold.
-- Engines are keyed by URL, so replicas that list them in another order still agree.

local P, cmd, lease_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local BATCH = 1000000000000000 -- added to batch waiters' scores: every interactive waiter sorts first

local function k(...) return P .. ':' .. table.concat({...}, ':') end

-- No grant before every live replica has re-established the leases Redis may have lost: after Redis
-- starts empty (no boot marker), or after nobody could reach it for half a lease (a restart or an outage).
-- Live replicas heartbeat every quarter lease, so a longer silence means Redis itself was away.
local function hold_until()
  local hold = tonumber(redis.call('GET', k('hold')) or '0')
  local seen = tonumber(redis.call('GET', k('seen')) or '0')
  if redis.call('EXISTS', k('boot')) == 0 or now - seen > lease_ms / 2 then
    hold = math.max(hold, now + lease_ms + 250)
    redis.call('SET', k('boot'), now)
    redis.call('SET', k('hold'), hold)
  end
  redis.call('SET', k('seen'), now)
  return hold
end

local function engine(url)
  local e = {url = url}
  local flat = redis.call('HGETALL', k('engine', url))
  for i = 1, #flat, 2 do e[flat[i]] = flat[i + 1] end
  local lk = k('lease', url)
  redis.call('ZREMRANGEBYSCORE', lk, '-inf', now) -- a dead replica's leases end here
  e.leases = redis.call('ZCARD', lk)
  e.cap = tonumber(e.cap or '1')
  e.cool = tonumber(e.cool or '0')
  e.unknown = e.down == nil -- not probed since Redis started: a waiter may wait for its first probe
  e.down = e.down ~= '0' -- unknown engines are down until a probe sees them answer
  e.selectable = (not e.down) and e.cool <= now
  e.free = e.selectable and e.leases < e.cap
  return e
end

local function public(e)
  return {url = e.url, down = e.down, cool_ms = math.max(0, e.cool - now), leases = e.leases,
          wknown = e.wknown ~= '0', wgpt = e.wgpt or '', wsov = e.wsov or '', flavor = e.flavor or '',
          version = e.version or '', error = e.error or ''}
end

local function all_engines()
  local list = {}
  for _, url in ipairs(redis.call('SMEMBERS', k('engines'))) do list[url] = engine(url) end
  return list
end

local function states(engines)
  local out = {}
  for _, e in pairs(engines) do table.insert(out, public(e)) end
  return out
end

local function split(s)
  local out = {}
  if s == nil or s == '' then return out end
  for part in string.gmatch(s, '[^\n]+') do table.insert(out, part) end
  return out
end

local function matches(e, wgpt, wsov)
  if wgpt == '' and wsov == '' then return true end
  if e.wknown == '0' then return false end
  return (wgpt == '' or wgpt == (e.wgpt or '')) and (wsov == '' or wsov == (e.wsov or ''))
end

-- The selection rules of selection.py: untried healthy engines first (any healthy one when all were tried),
-- then matching weights, then least busy, then round-robin.
local function pick(engines, w)
  local cands, tried = split(w.cands), {}
  for _, url in ipairs(split(w.tried)) do tried[url] = true end
  local healthy, untried = {}, {}
  for i, url in ipairs(cands) do
    local e = engines[url]
    if e and e.selectable then
      table.insert(healthy, {i, e})
      if not tried[url] then table.insert(untried, {i, e}) end
    end
  end
  local pool = (#untried > 0) and untried or healthy
  local rr = tonumber(redis.call('GET', k('rr')) or '0')
  local best, best_rank
  for _, item in ipairs(pool) do
    local i, e = item[1], item[2]
    if e.free then
      local rank = {matches(e, w.wgpt, w.wsov) and 0 or 1, e.leases, (i - 1 - rr) % #cands}
      if best == nil or rank[1] < best_rank[1] or (rank[1] == best_rank[1] and (rank[2] < best_rank[2]
          or (rank[2] == best_rank[2] and rank[3] < best_rank[3]))) then
        best, best_rank = item, rank
      end
    end
  end
  if best == nil then return nil end
  redis.call('SET', k('rr'), best[1] % #cands)
  return best[2]
end

-- No candidate healthy, and no cooldown among them ends before the waiter gives up: it can only fail.
local function hopeless(engines, w)
  for _, url in ipairs(split(w.cands)) do
    local e = engines[url]
    if e and (e.selectable or e.unknown or (not e.down and e.cool <= tonumber(w.give_up))) then return false end
  end
  return true
end

local function grant(e, id, w)
  local fence = redis.call('HINCRBY', k('engine', e.url), 'fence', 1)
  local token = fence .. '|' .. w.replica .. '|' .. id
  redis.call('ZADD', k('lease', e.url), now + lease_ms, token)
  e.leases = e.leases + 1
  e.free = e.leases < e.cap
  local g = {id = id, url = e.url, token = token, wknown = e.wknown ~= '0', wgpt = e.wgpt or '', wsov = e.wsov or ''}
  redis.call('HSET', k('waiter', id), 'granted', cjson.encode(g))
  redis.call('ZREM', k('queue'), id)
  return g
end

-- Hand free slots to waiters in queue order; tell each replica about its waiters' grants (and failures), except
-- the waiter asking (`asking`): its grant goes back in the reply.
local function dispatch(engines, asking)
  local out = {}
  if now < hold_until() then return out end
  local any_free = false
  for _, e in pairs(engines) do any_free = any_free or e.free end
  for _, id in ipairs(redis.call('ZRANGE', k('queue'), 0, -1)) do
    local flat = redis.call('HGETALL', k('waiter', id))
    local w = {}
    for i = 1, #flat, 2 do w[flat[i]] = flat[i + 1] end
    if w.replica == nil or redis.call('EXISTS', k('replica', w.replica)) == 0 then
      redis.call('ZREM', k('queue'), id) -- its replica died: nobody waits for the answer
      redis.call('DEL', k('waiter', id))
    elseif hopeless(engines, w) then
      redis.call('ZREM', k('queue'), id)
      redis.call('HSET', k('waiter', id), 'granted', cjson.encode({id = id, failed = 'no_engine'}))
      redis.call('PUBLISH', k('grants', w.replica), cjson.encode({id = id, failed = 'no_engine'}))
    elseif any_free then
      local e = pick(engines, w)
      if e then
        local g = grant(e, id, w)
        table.insert(out, g)
        if id ~= asking then redis.call('PUBLISH', k('grants', w.replica), cjson.encode(g)) end
        any_free = false
        for _, other in pairs(engines) do any_free = any_free or other.free end
      end
    end
  end
  return out
end

local function depths()
  return {redis.call('ZCOUNT', k('queue'), '-inf', '(' .. BATCH / 2), redis.call('ZCOUNT', k('queue'), BATCH / 2, '+inf')}
end

local function answer(extra, engines)
  extra.engines = states(engines or all_engines())
  extra.depths = depths()
  extra.hold_ms = math.max(0, tonumber(redis.call('GET', k('hold')) or '0') - now)
  return cjson.encode(extra)
end

if cmd == 'enqueue' then -- id, replica, cands, tried, wgpt, wsov, give_up_ms, batch, retry, max_queue
  local id, replica = ARGV[4], ARGV[5]
  local batch, retry, max_queue = ARGV[11] == '1', ARGV[12] == '1', tonumber(ARGV[13])
  local engines = all_engines()
  local d = depths()
  local seq = redis.call('INCR', k('seq'))
  local score = (retry and -seq or seq) + (batch and BATCH or 0)
  redis.call('HSET', k('waiter', id), 'replica', replica, 'cands', ARGV[6], 'tried', ARGV[7], 'wgpt', ARGV[8],
             'wsov', ARGV[9], 'give_up', now + tonumber(ARGV[10]))
  redis.call('PEXPIRE', k('waiter', id), tonumber(ARGV[10]) + lease_ms)
  redis.call('ZADD', k('queue'), score, id)
  local granted = dispatch(engines, id)
  for _, g in ipairs(granted) do
    if g.id == id then return answer({granted = g}, engines) end
  end
  local failed = redis.call('HGET', k('waiter', id), 'granted')
  if failed then
    redis.call('DEL', k('waiter', id))
    return answer({failed = 'no_engine'}, engines)
  end
  if not batch and not retry and d[1] >= max_queue then
    redis.call('ZREM', k('queue'), id)
    redis.call('DEL', k('waiter', id))
    return answer({full = d[1]}, engines)
  end
  return answer({queued = true}, engines)

elseif cmd == 'leave' then -- id: a waiter gave up; a slot it was granted meanwhile goes back
  local id = ARGV[4]
  local g = redis.call('HGET', k('waiter', id), 'granted')
  redis.call('ZREM', k('queue'), id)
  redis.call('DEL', k('waiter', id))
  if g then
    local d = cjson.decode(g)
    if d.url then redis.call('ZREM', k('lease', d.url), d.token) end
  end
  local engines = all_engines()
  dispatch(engines)
  return answer({}, engines)

elseif cmd == 'release' then -- url, token, down, cool_ms, error, weights_update, wknown, wgpt, wsov
  local url = ARGV[4]
  local key = k('engine', url)
  redis.call('ZREM', k('lease', url), ARGV[5])
  redis.call('DEL', k('waiter', string.match(ARGV[5], '^[^|]*|[^|]*|(.*)$')))
  redis.call('HSET', key, 'down', ARGV[6], 'cool', now + tonumber(ARGV[7]), 'error', ARGV[8])
  if ARGV[9] == '1' then redis.call('HSET', key, 'wknown', ARGV[10], 'wgpt', ARGV[11], 'wsov', ARGV[12]) end
  local engines = all_engines()
  dispatch(engines)
  return answer({}, engines)

elseif cmd == 'weights' then -- url, token, wknown, wgpt, wsov: only while holding the lease
  if redis.call('ZSCORE', k('lease', ARGV[4]), ARGV[5]) == false then return answer({lost = true}) end
  redis.call('HSET', k('engine', ARGV[4]), 'wknown', ARGV[6], 'wgpt', ARGV[7], 'wsov', ARGV[8])
  return answer({})

elseif cmd == 'renew' then -- replica, held tokens (url\ntoken\n...), pending waiter ids, engines (url\ncap\n...)
  redis.call('SET', k('replica', ARGV[4]), now, 'PX', lease_ms)
  local shared = split(ARGV[7]) -- registered again: Redis may have restarted empty
  for i = 1, #shared, 2 do
    redis.call('SADD', k('engines'), shared[i])
    redis.call('HSET', k('engine', shared[i]), 'cap', shared[i + 1])
    redis.call('HSETNX', k('engine', shared[i]), 'wknown', '0') -- new to this Redis: its weights are unknown
  end
  local held = split(ARGV[5])
  for i = 1, #held, 2 do -- re-added if Redis lost it: the engine really is working for us
    redis.call('ZADD', k('lease', held[i]), now + lease_ms, held[i + 1])
  end
  local resolved, lost = {}, {}
  for _, id in ipairs(split(ARGV[6])) do
    local g = redis.call('HGET', k('waiter', id), 'granted')
    if g then table.insert(resolved, cjson.decode(g))
    elseif redis.call('EXISTS', k('waiter', id)) == 0 then table.insert(lost, id) end
  end
  local engines = all_engines()
  dispatch(engines)
  return answer({resolved = resolved, lost = lost}, engines)

elseif cmd == 'probe' then -- url, replica, interval_ms, force: a probe holds the engine like a request
  if now < hold_until() then return answer({}) end -- a lease not yet re-established may be on it
  local e = engine(ARGV[4])
  local due = e.down or ARGV[7] == '1' or now - tonumber(e.probed or '0') >= tonumber(ARGV[6])
  if e.leases > 0 or not due then return answer({}) end
  local fence = redis.call('HINCRBY', k('engine', e.url), 'fence', 1)
  local token = fence .. '|' .. ARGV[5] .. '|probe'
  redis.call('ZADD', k('lease', e.url), now + lease_ms, token)
  redis.call('HSET', k('engine', e.url), 'probed', now)
  return answer({token = token})

elseif cmd == 'probed' then -- url, token, healthy, recovered, flavor, version, error
  local key = k('engine', ARGV[4])
  redis.call('ZREM', k('lease', ARGV[4]), ARGV[5])
  redis.call('HSET', key, 'down', ARGV[6] == '1' and '0' or '1', 'error', ARGV[10])
  if ARGV[8] ~= '' then redis.call('HSET', key, 'flavor', ARGV[8], 'version', ARGV[9]) end
  if ARGV[7] == '1' then redis.call('HSET', key, 'wknown', '0') end -- it may have restarted
  local engines = all_engines()
  dispatch(engines)
  return answer({}, engines)

elseif cmd == 'dispatch' then
  local engines = all_engines()
  dispatch(engines)
  return answer({}, engines)
end
return redis.error_reply('unknown command ' .. tostring(cmd))
