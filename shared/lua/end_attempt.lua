-- Delete internal fields only while ``attempt`` is still the record's (an attempt ending: its
-- marks go) (Store.end_attempt).
-- uses: internal
-- KEYS[1] nb:<hostname>, the record
-- ARGV[1] attempt
-- ARGV[2..] internal field names (with their '_')
-- Returns the number of fields deleted, 0 when the attempt is no longer the record's.
if redis.call('HGET', KEYS[1], INTERNAL.ATTEMPT) ~= ARGV[1] then return 0 end
return redis.call('HDEL', KEYS[1], unpack(ARGV, 2))
