-- Hand a ready warm-pool member to a user: the record gets the user, a fresh start time and
-- expiry, moves to the user's index and is published as a change (shared/pool.py, Pool.claim).
-- uses: status, internal, quota, record_event
-- KEYS[1] pool:<image>:ready, the ready list
-- KEYS[2] pool:<image>:members, the members set
-- KEYS[3] idx:all
-- KEYS[4] idx:user:_pool
-- KEYS[5] idx:status:ACTIVE
-- KEYS[6] live:user:_pool
-- KEYS[7] live:user:<user>
-- KEYS[8] rate:<user>
-- KEYS[9] idx:user:<user>
-- ARGV[1] the record keys' prefix (nb:<h> is derived per member taken from the ready list)
-- ARGV[2] user
-- ARGV[3] now (RFC 3339)
-- ARGV[4] score (epoch)
-- ARGV[5] expires_at
-- ARGV[6] events channel
-- ARGV[7] most notebooks per user (0: no limit; a member already counts in the total)
-- ARGV[8] spawn rate (0: no limit)
-- ARGV[9] rate window (seconds)
-- ARGV[10] the pool's pseudo-user (POOL_USER)
-- Returns the claimed record as a flat hash, nil when no ready member is left, or {-2, ...}
-- when the user's quota refuses the spawn (quota.lua).
local refusal = quota_refusal(KEYS[6], KEYS[7], KEYS[8], 0, tonumber(ARGV[7]), tonumber(ARGV[8]),
                              tonumber(ARGV[9]), tonumber(ARGV[4]))
if refusal then return refusal end
while true do
  local h = redis.call('LPOP', KEYS[1])
  if not h then return nil end
  local key = ARGV[1] .. h
  -- A member that died, was culled or killed since it was offered is skipped (and dropped).
  if redis.call('HGET', key, 'status') == STATUS.ACTIVE and redis.call('HGET', key, 'user') == ARGV[10] then
    redis.call('SREM', KEYS[2], h)
    redis.call('HDEL', key, INTERNAL.POOL)
    redis.call('HSET', key, 'user', ARGV[2], 'start_time', ARGV[3], 'updated_at', ARGV[3],
               'expires_at', ARGV[5])
    redis.call('ZREM', KEYS[4], h)
    redis.call('ZADD', KEYS[9], ARGV[4], h)
    redis.call('ZADD', KEYS[3], ARGV[4], h)
    redis.call('ZADD', KEYS[5], ARGV[4], h)
    redis.call('SREM', KEYS[6], h)
    redis.call('SADD', KEYS[7], h)
    quota_record(KEYS[8], tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[4]), h)
    local flat = redis.call('HGETALL', key)
    redis.call('PUBLISH', ARGV[6], record_event(flat))
    return flat
  end
end
