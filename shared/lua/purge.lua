-- Delete a record and its index entries (Store.purge_ended).
-- KEYS[1] nb:<hostname>, the record
-- KEYS[2] idx:all
-- KEYS[3] idx:ended
-- ARGV[1] key prefix (idx:user:<u> and idx:status:<s> are derived from it)
-- ARGV[2] hostname
-- Returns 1 when the record was deleted, 0 when it was already gone.
local user = redis.call('HGET', KEYS[1], 'user')
local status = redis.call('HGET', KEYS[1], 'status')
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
if user then redis.call('ZREM', ARGV[1] .. 'idx:user:' .. user, ARGV[2]) end
if status then redis.call('ZREM', ARGV[1] .. 'idx:status:' .. status, ARGV[2]) end
return redis.call('DEL', KEYS[1])
