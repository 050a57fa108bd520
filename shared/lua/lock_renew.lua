-- Renew a lock while it is the holder's (shared/locks.py).
-- KEYS[1] lock:<name>, the lock
-- ARGV[1] token (the holder's)
-- ARGV[2] ttl (ms)
-- Returns 1 when renewed, 0 when the lock is not the holder's.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
