-- A warm-pool member became ACTIVE: append it to the ready list unless it is already there, so
-- the list never holds a member twice and its length is the number of members ready (Pool.offer).
-- KEYS[1] pool:<image>:ready, the ready list
-- ARGV[1] hostname
-- Returns nothing.
if not redis.call('LPOS', KEYS[1], ARGV[1]) then
  redis.call('RPUSH', KEYS[1], ARGV[1])
end
