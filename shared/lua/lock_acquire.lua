-- Take a RerunLock, or ask its holder to run again (shared/locks.py).
-- KEYS[1] lock:<name>, the lock
-- KEYS[2] lock:<name>:again, the request to run again
-- ARGV[1] token (the would-be holder's)
-- ARGV[2] the lock's ttl (ms)
-- ARGV[3] the request's ttl (ms)
-- Returns 1 when the lock is taken, 0 when the holder was asked to run again.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('DEL', KEYS[2])  -- this run serves every request made so far
  return 1
end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
return 0
