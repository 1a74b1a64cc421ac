--[[
settle.lua - replace an admission's reservation with what was really used,
and release its concurrency lease.  Idempotent per lease id: the first call
applies the difference and answers 1; any later call with the same lease id
within SETTLED_TTL_MS (10 minutes) changes nothing and answers 0 (a retry
after a Redis timeout never charges twice; tollgate retries after 250 ms,
500 ms and 1 s, then gives up, so the marker only has to outlive those).  Call it only for admissions that were allowed.
Run with EVALSHA; arguments from tg_quota_script_settle_args()
(filters/quota_script.h); filters/quota_local.c implements the same rules.

KEYS (numkeys 1 without a tenant, 2 with one), as for admit.lua:
  KEYS[1]  principal base  "<prefix>{<principal>}:"
  KEYS[2]  tenant base     "<prefix>{tenant:<tenant>}:"   (optional)
  The marker is KEYS[1] .. "settled:" .. lease (SETTLED_TTL_MS, 10 min;
  TG_QUOTA_SETTLED_TTL_MS in filters/quota_common.h).

ARGV (decimal integers in 0..1e14 except the lease; 13 entries with 1 key,
19 with 2):
  ARGV[1]       lease id, as admitted
  ARGV[2]       tokens reserved at admission
  ARGV[3]       tokens actually used
  ARGV[4]       cost reserved, micro-dollars
  ARGV[5]       cost actually incurred, micro-dollars
  ARGV[6]       day of the admission (its reply's day)
  ARGV[7]       month of the admission (its reply's month)
  ARGV[8..13]   principal limits rpm tpm tpd cpd cpm conc, as admitted
  ARGV[14..19]  tenant limits (only with KEYS[2])

Reply: integer 1 (settled) or 0 (already settled).  Bad arguments answer an
error reply "ERR tg settle: ...".

For each scope and each limit that is not 0 (the clock is Redis TIME):
- tpm: d = actual - reserved tokens.  d > 0: TAT = max(TAT, now) +
  floor(d * 60e6 / L) (as admit.lua rounds), charged in full even past the one-minute burst (capped
  at now + 2^50 us).  d < 0: TAT = max(TAT - floor(-d * 60e6 / L), now),
  only when the key exists (a refund never banks credit).
- tpd: the admission day's counter += actual - reserved tokens; cpd (same
  day) and cpm (the admission month) += actual - reserved cost.  A counter
  never goes below 0, a refund to a missing counter does nothing, and a
  window that ended more than a day ago is left alone (its key expired).
- rpm: unchanged (the request happened).
- conc: the lease is removed from both scopes' sets whatever the limits
  (a limit lowered to 0 by a reload must not strand a lease).

Commands: SET NX PX for the marker (a duplicate stops there); TIME only
when some amount changed; per scope one MGET of the keys a change must
read (tpm, and the counters of a refund), SET per changed bucket or
refunded counter, INCRBY per charged counter (PEXPIREAT only when it
created the key), ZREM.
]]

local WINDOW = 60000000
local VMAX = 100000000000000
local AHEAD_MAX = 1125899906842624
local DAY_MS = 86400000
local SETTLED_TTL_MS = 600000 -- 10 min: TG_QUOTA_SETTLED_TTL_MS
local LEASE_MAX = 128

local floor = math.floor

-- See admit.lua for fdiv, units, ceil_ms and the calendar.
local function fdiv(x, d)
  local q = floor(x / d)
  local r = x - q * d
  if r < 0 then q = q - 1; r = r + d elseif r >= d then q = q + 1; r = r - d end
  return q, r
end
local STEPS = {6, 10, 10, 10, 10, 10, 10, 10}
local function units(a, L)
  local q, r = fdiv(a, L)
  if q > 33554432 then return AHEAD_MAX + 1, 0 end
  local acc = 0
  for i = 1, #STEPS do
    local t
    t, r = fdiv(r * STEPS[i], L)
    acc = acc * STEPS[i] + t
  end
  return q * WINDOW + acc, r
end
local function ceil_ms(us)
  return (fdiv(us + 999, 1000))
end
local function fmt(v)
  return string.format('%.0f', v)
end
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = floor(y / 400)
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doy = floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end
local function month_first_day(mo)
  local y = floor(mo / 12)
  return days_from_civil(y, mo - y * 12 + 1, 1)
end
local function num(s)
  local v = tonumber(s)
  if v == nil or not (v >= 0 and v <= VMAX) or v ~= floor(v) then return nil end
  return v
end
local function bad(what)
  return redis.error_reply('ERR tg settle: ' .. what)
end

-- Arguments.
local nk = #KEYS
if (nk ~= 1 and nk ~= 2) or #ARGV ~= 7 + 6 * nk then return bad('argument count') end
local lease = ARGV[1]
if #lease < 1 or #lease > LEASE_MAX then return bad('lease') end
local v = {}
for i = 2, 7 do
  v[i] = num(ARGV[i])
  if v[i] == nil then return bad('number') end
end
local dtok, dcost, day, month = v[3] - v[2], v[5] - v[4], v[6], v[7]
local lim = {}
for s = 1, nk do
  lim[s] = {}
  for i = 1, 6 do
    local l = num(ARGV[7 + (s - 1) * 6 + i])
    if l == nil then return bad('limit') end
    lim[s][i] = l
  end
end

-- Idempotency first: a duplicate touches nothing else.
if not redis.call('SET', KEYS[1] .. 'settled:' .. lease, '1', 'NX', 'PX', SETTLED_TTL_MS) then
  return 0
end

-- The clock, read only when some amount changes.
local now, now_ms
local function clock()
  if now == nil then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000000 + tonumber(t[2])
    now_ms = (fdiv(now, 1000))
  end
end
local day_expire_ms = (day + 2) * DAY_MS
local month_expire_ms = (month_first_day(month + 1) + 1) * DAY_MS

-- raw: the key's value as read (false when absent).
local function adjust_tat(key, raw, d, L)
  local tat = tonumber(raw)
  if d > 0 then
    if tat == nil or not (tat >= now) then tat = now end
    if tat > now + AHEAD_MAX then tat = now + AHEAD_MAX end
    tat = tat + (units(d, L))
    if tat > now + AHEAD_MAX then tat = now + AHEAD_MAX end
  else
    if tat == nil then return end
    if tat > now + AHEAD_MAX then tat = now + AHEAD_MAX end
    tat = tat - (units(-d, L))
    if not (tat >= now) then tat = now end
  end
  redis.call('SET', key, fmt(tat), 'PX', fmt(ceil_ms(tat - now) + 1000))
end

local function adjust_counter(key, raw, d, expire_ms)
  if d > 0 then
    -- The expiry only depends on the key's window: set it when INCRBY
    -- created the key (or found it at 0, which is harmless).
    if redis.call('INCRBY', key, fmt(d)) == d then
      redis.call('PEXPIREAT', key, fmt(expire_ms))
    end
  else
    local c = tonumber(raw)
    if c == nil then return end
    c = c + d
    if not (c >= 0) then c = 0 end
    redis.call('SET', key, fmt(c), 'KEEPTTL')
  end
end

local SUFFIX = {nil, 'tpm', 'tpd:' .. fmt(day), 'cpd:' .. fmt(day), 'cpm:' .. fmt(month)}
local delta = {nil, dtok, dtok, dcost, dcost}
local expire = {nil, nil, day_expire_ms, day_expire_ms, month_expire_ms}
for s = 1, nk do
  local base, L = KEYS[s], lim[s]
  -- What changes in this scope, and which of those keys must be read.
  local todo, names, idx, raw = {}, {}, {}, {}
  for i = 2, 5 do
    if L[i] > 0 and delta[i] ~= 0 then
      clock()
      if i == 2 or expire[i] > now_ms then
        todo[#todo + 1] = i
        if i == 2 or delta[i] < 0 then
          names[#names + 1] = base .. SUFFIX[i]
          idx[#idx + 1] = i
        end
      end
    end
  end
  if #names > 0 then
    local r = redis.call('MGET', unpack(names))
    for j = 1, #idx do raw[idx[j]] = r[j] end
  end
  for _, i in ipairs(todo) do
    if i == 2 then
      adjust_tat(base .. SUFFIX[i], raw[i], delta[i], L[i])
    else
      adjust_counter(base .. SUFFIX[i], raw[i], delta[i], expire[i])
    end
  end
  redis.call('ZREM', base .. 'conc', lease)
end
return 1
