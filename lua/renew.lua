--[[
renew.lua - keep a long request's concurrency lease alive: a lease that
still exists (in the principal's or the tenant's set) gets its expiry moved
to now + lifetime.  A lease that expired or was settled is not re-created:
by then another request may hold the slot.  Run with EVALSHA; arguments
from tg_quota_script_renew_args() (filters/quota_script.h);
filters/quota_local.c implements the same rule.

KEYS (numkeys 1 or 2), as for admit.lua:
  KEYS[1]  principal base  "<prefix>{<principal>}:"
  KEYS[2]  tenant base     "<prefix>{tenant:<tenant>}:"   (optional)
ARGV (exactly 2):
  ARGV[1]  lease id, as admitted
  ARGV[2]  new lifetime in ms from now (1..1e14)

Reply: integer 1 when the lease was found (in either scope) and extended,
0 when it was in neither.  Bad arguments answer "ERR tg renew: ...".
Expired leases of both sets are dropped on the way (not a charge); with
admit.lua pruning only at the limit, this keeps long-lived sets tidy.
]]

local VMAX = 100000000000000
local LEASE_MAX = 128

local function fmt(v)
  return string.format('%.0f', v)
end
local function bad(what)
  return redis.error_reply('ERR tg renew: ' .. what)
end

local nk = #KEYS
if (nk ~= 1 and nk ~= 2) or #ARGV ~= 2 then return bad('argument count') end
local lease = ARGV[1]
local ttl = tonumber(ARGV[2])
if #lease < 1 or #lease > LEASE_MAX then return bad('lease') end
if ttl == nil or not (ttl >= 1 and ttl <= VMAX) or ttl ~= math.floor(ttl) then
  return bad('number')
end

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local found = 0
for s = 1, nk do
  local key = KEYS[s] .. 'conc'
  redis.call('ZREMRANGEBYSCORE', key, '-inf', fmt(now_ms))
  if redis.call('ZSCORE', key, lease) then
    -- The key (it exists, so it has a TTL: admit.lua) expires with its
    -- last lease: only ever later.
    local e = fmt(now_ms + ttl)
    redis.call('ZADD', key, 'XX', e, lease)
    redis.call('PEXPIREAT', key, e, 'GT')
    found = 1
  end
end
return found
