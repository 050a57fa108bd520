-- Release a lock or lease, only if it is still the holder's (shared/locks.py).
-- KEYS[1] lock:<name>, the lock or lease
-- ARGV[1] token (the holder's)
-- Returns 1 when released, 0 when it was not the holder's (expired, taken over).
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
