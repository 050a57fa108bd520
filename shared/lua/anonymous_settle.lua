-- Settle an anonymous launch's reservation: the notebook takes its slot, or the slot (and its
-- rate entry) is given back (api/anonymous.py, Reservation).
-- KEYS[1] anon:live:<key>
-- KEYS[2] anon:rate:<key>
-- ARGV[1] nonce
-- ARGV[2] hostname ('' to give the slot back)
-- Returns 1.
redis.call('ZREM', KEYS[1], '?' .. ARGV[1])
if ARGV[2] ~= '' then
  redis.call('ZADD', KEYS[1], 0, ARGV[2])
else
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return 1
