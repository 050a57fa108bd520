-- Move a record to a new status (or keep it) and set fields, only from an allowed status and only
-- while the caller's spawn attempt is still the record's; its indexes, quota slot and event change
-- in the same step (Store.transition).
-- uses: status, internal, record_event
-- KEYS[1] nb:<hostname>, the record
-- KEYS[2] idx:all
-- KEYS[3] idx:ended
-- KEYS[4] live:all
-- KEYS[5..] idx:status:<s>, one per status in Status's order (KEYS[5 + STATUS_AT[s]])
-- ARGV[1] live:user:, the per-user quota sets' prefix (live:user:<u> is derived from the record's user)
-- ARGV[2] new status ('' keeps it)
-- ARGV[3] updated_at
-- ARGV[4] events channel
-- ARGV[5] now (epoch)
-- ARGV[6] the spawn attempt the caller is ('' for none: see Store.claim_spawn)
-- ARGV[7] '1' to fence (end every attempt in flight: the record's attempt number goes up)
-- ARGV[8] n, how many statuses follow to narrow the move to (-1: none, the move is allowed from
--         every status TRANSITIONS allows it from; with no new status, n >= 0 says where from)
-- ARGV[9..8+n] the statuses the move is narrowed to
-- ARGV[9+max(n,0)..] field1, value1, ...
-- Returns {1, flat hash} on success, {2, flat hash} when the record already has the new status
-- (nothing written: a retried or repeated move is a no-op), {0} when missing, {-1, current
-- status} when not allowed, {-3, current attempt} when the caller's attempt is no longer the
-- record's (nothing written: a later attempt, or a fencing move, took over).
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {0} end
if ARGV[6] ~= '' then
  local attempt = redis.call('HGET', KEYS[1], INTERNAL.ATTEMPT) or ''
  if attempt ~= ARGV[6] then return {-3, attempt} end
end
if cur == ARGV[2] then return {2, redis.call('HGETALL', KEYS[1])} end
local n = tonumber(ARGV[8])
local fields_at = 9 + math.max(n, 0)
local allowed = n < 0
for i = 9, 8 + n do
  if ARGV[i] == cur then allowed = true end
end
if ARGV[2] ~= '' and not (TRANSITIONS[cur] or {})[ARGV[2]] then allowed = false end
if not allowed then return {-1, cur} end
local new = ARGV[2]
if new == '' then new = cur end
redis.call('HSET', KEYS[1], 'status', new, 'updated_at', ARGV[3])
if ARGV[7] == '1' then redis.call('HINCRBY', KEYS[1], INTERNAL.ATTEMPT, 1) end
if #ARGV >= fields_at then redis.call('HSET', KEYS[1], unpack(ARGV, fields_at)) end
if new ~= cur then
  local hostname = redis.call('HGET', KEYS[1], 'hostname')
  local score = redis.call('ZSCORE', KEYS[2], hostname)
  redis.call('ZREM', KEYS[5 + STATUS_AT[cur]], hostname)
  if score then redis.call('ZADD', KEYS[5 + STATUS_AT[new]], score, hostname) end
  -- Terminal records are kept for RECORD_RETENTION from the moment they ended.
  if TERMINAL[new] then redis.call('ZADD', KEYS[3], ARGV[5], hostname) end
  -- Leaving the counted statuses frees the notebook's quota slot (live:all, live:user:<u>).
  if not COUNTED[new] then
    redis.call('SREM', KEYS[4], hostname)
    redis.call('SREM', ARGV[1] .. (redis.call('HGET', KEYS[1], 'user') or ''), hostname)
  end
end
local flat = redis.call('HGETALL', KEYS[1])
redis.call('PUBLISH', ARGV[4], record_event(flat))
return {1, flat}
