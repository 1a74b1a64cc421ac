--[[
admit.lua - one atomic admission: every limit of the principal and of its
tenant is checked, and either all of them are charged or none is.
Run with EVALSHA; the proxy builds the arguments with
tg_quota_script_admit_args() (filters/quota_script.h) and the in-process
backend (filters/quota_local.c) implements the same rules.

KEYS (numkeys 1 without a tenant, 2 with one):
  KEYS[1]  principal base  "<prefix>{<principal>}:"
  KEYS[2]  tenant base     "<prefix>{tenant:<tenant>}:"   (optional)
  Names are escaped (quota_common.h); the script appends the suffixes
  rpm, tpm, tpd:<day>, cpd:<day>, cpm:<month>, conc.

ARGV (decimal integers, each in 0..1e14; 10 entries with 1 key, 16 with 2):
  ARGV[1]      tokens reserved (prompt estimate + output allowance)
  ARGV[2]      cost reserved, micro-dollars
  ARGV[3]      lease id (1..128 bytes, unique per admission)
  ARGV[4]      lease lifetime in ms (>= 1)
  ARGV[5..10]  principal limits: rpm tpm tpd cpd cpm conc (0 = unlimited)
  ARGV[11..16] tenant limits, same order (only with KEYS[2])

Reply: an array of 9 integers
  1 allowed         1 when every limit had room and all were charged, else 0
  2 denied          -1, or scope * 6 + limit of the first refusal
                    (scope 0 principal, 1 tenant; limit 0 rpm, 1 tpm,
                    2 tpd, 3 cpd, 4 cpm, 5 conc)
  3 retry_after_ms  when denied: time until the same request could pass
  4 rem_rpm         principal requests left in the burst after this request
                    (-1 when unlimited)
  5 reset_rpm_ms    time until the principal's rpm bucket is full again
  6 rem_tpm         the same for tokens_per_minute
  7 reset_tpm_ms
  8 day             UTC day the reservation went to (days since 1970-01-01)
  9 month           UTC month: year * 12 + month - 1
Bad argument counts or values answer an error reply "ERR tg admit: ...".

The rules (the clock is Redis TIME, in microseconds):
- rpm and tpm are GCRA buckets with a one-minute burst.  A reservation of n
  units (rpm: 1; tpm: the tokens, skipped when 0) costs
  inc = floor(n * 60e6 / L) us of "theoretical arrival time" (TAT); rounded
  down so that a full burst of exactly L passes whatever L is.  With
  tat0 = max(stored TAT, now) it passes when tat0 + inc - now <= 60e6; the
  new TAT is stored with a TTL of the time to full replenishment + 1 s.
  Refused: retry after tat0 + inc - 60e6 - now; n > L can never pass and
  answers 60 s.  remaining = floor((60e6 - (tat - now)) * L / 60e6).
- tpd, cpd, cpm are counters of the current UTC day / month.  Refused when
  counter >= L (the budget is spent, even for a 0 charge) or
  counter + charge > L; retry after the window ends.  Counter keys expire
  one day after their window ends.
- conc is a set of leases.  The request passes when fewer than L live
  leases remain, and its lease expires at now + lifetime (renew.lua extends
  it, settle.lua removes it).  Refused: retry after min(1 s, time until the
  oldest lease expires), at least 1 ms.  Expired leases are dropped only
  when the set holds L or more (live + expired >= live, so a smaller set
  has room anyway) and by renew.lua; the set's key expires with its last
  lease (its TTL only ever moves later), so it never holds more than
  max(L) entries and never outlives its leases.
- Check order: principal rpm tpm tpd cpd cpm conc, then the tenant's; the
  first refusal decides, and nothing is charged.  (Dropping expired leases
  is not a charge and happens either way.)

Commands (Redis CPU is per command): TIME, one MGET per scope for the
string keys of its non-zero limits, ZCARD per conc limit (plus
ZREMRANGEBYSCORE, ZCARD and ZRANGE only at the limit); charging: SET .. PX
per bucket, INCRBY per counter (PEXPIREAT only when INCRBY created the key:
a counter's expiry is a function of its name), ZADD + PEXPIREAT per lease.
Nothing is read or written for a limit of 0.
]]

local WINDOW = 60000000
local VMAX = 100000000000000
local AHEAD_MAX = 1125899906842624
local DAY_US = 86400000000
local DAY_MS = 86400000
local CONC_RETRY_MS = 1000
local LEASE_MAX = 128

local floor = math.floor

-- floor(x / d) and x mod d for exact integers 0 <= x, x + d < 2^53, d >= 1.
-- The division of doubles may round up to the next integer; fix that.
local function fdiv(x, d)
  local q = floor(x / d)
  local r = x - q * d
  if r < 0 then q = q - 1; r = r + d elseif r >= d then q = q + 1; r = r - d end
  return q, r
end

-- floor(a * 60e6 / L) and its remainder, by long division so every step
-- stays below 2^53 (a, L <= 1e14).  Values past AHEAD_MAX are only ever
-- compared or clamped, so a huge quotient saturates.
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

-- Microseconds to milliseconds, rounded up.
local function ceil_ms(us)
  return (fdiv(us + 999, 1000))
end

-- floor(w * L / 60e6) for 0 <= w <= 60e6, L <= 1e14: what is left of the burst.
local function remaining(d, L)
  if d < 0 then d = 0 end
  if d >= WINDOW then return 0 end
  local w = WINDOW - d
  local qL, rL = fdiv(L, WINDOW)
  return qL * w + (fdiv(rL * w, WINDOW))
end

local function fmt(v)
  return string.format('%.0f', v)
end

-- Hinnant's days_from_civil / civil_from_days (quota_common.c).
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = floor(y / 400)
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doy = floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end
local function month_of_day(z)
  z = z + 719468
  local era = floor(z / 146097)
  local doe = z - era * 146097
  local yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524) - floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100))
  local mp = floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y * 12 + m - 1
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
  return redis.error_reply('ERR tg admit: ' .. what)
end

-- Arguments.
local nk = #KEYS
if (nk ~= 1 and nk ~= 2) or #ARGV ~= 4 + 6 * nk then return bad('argument count') end
local tokens, cost, lease, ttl = num(ARGV[1]), num(ARGV[2]), ARGV[3], num(ARGV[4])
if tokens == nil or cost == nil or ttl == nil or ttl < 1 then return bad('number') end
if #lease < 1 or #lease > LEASE_MAX then return bad('lease') end
local lim = {}
for s = 1, nk do
  lim[s] = {}
  for i = 1, 6 do
    local v = num(ARGV[4 + (s - 1) * 6 + i])
    if v == nil then return bad('limit') end
    lim[s][i] = v
  end
end

-- The clock.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = (fdiv(now, 1000))
local day = (fdiv(now, DAY_US))
local month = month_of_day(day)
local day_end_ms = (day + 1) * DAY_MS
local month_end_ms = month_first_day(month + 1) * DAY_MS

-- A stored TAT, clamped into [now, now + AHEAD_MAX] (a missing, corrupt or
-- past value means a full bucket).  raw: the key's value (false if absent).
local function read_tat(raw)
  local v = tonumber(raw)
  if v == nil or not (v >= now) then return now end
  if v > now + AHEAD_MAX then return now + AHEAD_MAX end
  return v
end

local function read_counter(raw)
  local v = tonumber(raw)
  if v == nil or not (v >= 0) then return 0 end
  return v
end

-- Every string key a scope's non-zero limits use, read with one MGET.
local SUFFIX = {'rpm', 'tpm', 'tpd:' .. fmt(day), 'cpd:' .. fmt(day), 'cpm:' .. fmt(month)}
local key, raw = {}, {}
for s = 1, nk do
  local names, idx = {}, {}
  key[s], raw[s] = {}, {}
  for i = 1, 5 do
    if lim[s][i] > 0 then
      key[s][i] = KEYS[s] .. SUFFIX[i]
      names[#names + 1] = key[s][i]
      idx[#idx + 1] = i
    end
  end
  if #names > 0 then
    local r = redis.call('MGET', unpack(names))
    for j = 1, #idx do raw[s][idx[j]] = r[j] end
  end
end

-- Phase 1: check in order; remember the writes.  Nothing is written here
-- except the removal of expired leases.
local denied, retry = -1, 0
local writes = {}
local tat_rpm, tat_tpm = nil, nil -- principal: state before the charge
local new_rpm, new_tpm = nil, nil -- principal: state after the charge
for s = 1, nk do
  local base, L = KEYS[s], lim[s]
  for i = 1, 6 do
    if denied < 0 and L[i] > 0 then
      local ok, wait = true, 0
      if i == 1 or i == 2 then
        local n = (i == 1) and 1 or tokens
        local tat0 = read_tat(raw[s][i])
        local new = nil
        if n > 0 then
          if n > L[i] then
            ok, wait = false, 60000
          else
            new = tat0 + (units(n, L[i]))
            if new - now > WINDOW then ok, wait = false, ceil_ms(new - WINDOW - now) end
          end
          if ok then writes[#writes + 1] = {'tat', key[s][i], new} end
        end
        if s == 1 then
          if i == 1 then tat_rpm, new_rpm = tat0, new else tat_tpm, new_tpm = tat0, new end
        end
      elseif i <= 5 then
        local charge = (i == 3) and tokens or cost
        local wend = (i == 5) and month_end_ms or day_end_ms
        local c = read_counter(raw[s][i])
        if c >= L[i] or c + charge > L[i] then
          ok, wait = false, ceil_ms(wend * 1000 - now)
        elseif charge > 0 then
          writes[#writes + 1] = {'ctr', key[s][i], charge, wend + DAY_MS}
        end
      else
        local key = base .. 'conc'
        -- Stored leases bound the live ones: prune only at the limit.
        local card = redis.call('ZCARD', key)
        if card >= L[i] then
          redis.call('ZREMRANGEBYSCORE', key, '-inf', fmt(now_ms))
          card = redis.call('ZCARD', key)
        end
        if card >= L[i] then
          local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
          local e = tonumber(first[2]) or (now_ms + CONC_RETRY_MS)
          local w = e - now_ms
          if w > CONC_RETRY_MS then w = CONC_RETRY_MS end
          if w < 1 then w = 1 end
          ok, wait = false, w
        else
          writes[#writes + 1] = {'lease', key, card == 0}
        end
      end
      if not ok then denied, retry = (s - 1) * 6 + (i - 1), wait end
    end
  end
end

-- Phase 2: all or nothing.
if denied < 0 then
  for _, w in ipairs(writes) do
    if w[1] == 'tat' then
      redis.call('SET', w[2], fmt(w[3]), 'PX', fmt(ceil_ms(w[3] - now) + 1000))
    elseif w[1] == 'ctr' then
      -- The expiry only depends on the key's window: set it when INCRBY
      -- created the key (or found it at 0, which is harmless).
      if redis.call('INCRBY', w[2], fmt(w[3])) == w[3] then
        redis.call('PEXPIREAT', w[2], fmt(w[4]))
      end
    else
      -- The set's key expires with its last lease: a new set gets this
      -- lease's expiry, an existing one (which has a TTL) only a later one.
      local e = fmt(now_ms + ttl)
      redis.call('ZADD', w[2], e, lease)
      if w[3] then
        redis.call('PEXPIREAT', w[2], e)
      else
        redis.call('PEXPIREAT', w[2], e, 'GT')
      end
    end
  end
end

-- What the principal's per-minute buckets look like now (the charged state
-- when allowed, the untouched one when refused; 0 left for the refusing one).
local function report(i, tat0, new)
  local L = lim[1][i]
  if L == 0 then return -1, 0 end
  if tat0 == nil then tat0 = read_tat(raw[1][i]) end
  local tat = tat0
  if denied < 0 and new ~= nil then tat = new end
  local rem = remaining(tat - now, L)
  if denied == i - 1 then rem = 0 end
  return rem, ceil_ms(tat - now)
end
local rem_rpm, reset_rpm = report(1, tat_rpm, new_rpm)
local rem_tpm, reset_tpm = report(2, tat_tpm, new_tpm)

return {denied < 0 and 1 or 0, denied, retry, rem_rpm, reset_rpm, rem_tpm, reset_tpm, day, month}
