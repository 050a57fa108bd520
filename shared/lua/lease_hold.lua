-- Take a Lease, or keep it for its holder (shared/locks.py).
-- KEYS[1] lock:<name>, the lease
-- ARGV[1] token (the would-be holder's)
-- ARGV[2] ttl (ms)
-- Returns 1 when the caller holds the lease, else 0.
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
