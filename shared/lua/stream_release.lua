-- Give a stream slot back (shared/streams.py, StreamSlots).
-- KEYS[1] streams:<who>, slots held per process
-- ARGV[1] this process's id
-- Returns 1.
if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 1
