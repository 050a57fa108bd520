-- Set internal fields only while ``attempt`` is still the record's (a long step keeping its
-- deadline ahead of it); publishes nothing, the record's public fields are unchanged
-- (Store.keep_attempt).
-- uses: internal
-- KEYS[1] nb:<hostname>, the record
-- ARGV[1] attempt
-- ARGV[2..] field1, value1, ... (internal field names, with their '_')
-- Returns 1 when set, 0 when the attempt is no longer the record's (nothing set).
if redis.call('HGET', KEYS[1], INTERNAL.ATTEMPT) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
