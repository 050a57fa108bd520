-- The holder of a RerunLock is done (shared/locks.py).
-- KEYS[1] lock:<name>, the lock
-- KEYS[2] lock:<name>:again, the request to run again
-- ARGV[1] token (the holder's)
-- ARGV[2] the lock's ttl (ms)
-- Returns 1 when someone asked to run again (the lock is kept, renewed: run once more), 0 when
-- the lock is released, -1 when it was no longer the holder's (it had expired).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if redis.call('DEL', KEYS[2]) == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
redis.call('DEL', KEYS[1])
return 0
