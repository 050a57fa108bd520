-- Delete a record and its index entries (Store.purge_ended).
-- uses: status
-- KEYS[1] nb:<hostname>, the record
-- KEYS[2] idx:all
-- KEYS[3] idx:ended
-- KEYS[4..] idx:status:<s>, one per status in Status's order (KEYS[4 + STATUS_AT[s]])
-- ARGV[1] idx:user:, the per-user indexes' prefix (idx:user:<u> is derived from the record's user)
-- ARGV[2] hostname
-- Returns 1 when the record was deleted, 0 when it was already gone.
local user = redis.call('HGET', KEYS[1], 'user')
local status = redis.call('HGET', KEYS[1], 'status')
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
if user then redis.call('ZREM', ARGV[1] .. user, ARGV[2]) end
if status and STATUS_AT[status] then redis.call('ZREM', KEYS[4 + STATUS_AT[status]], ARGV[2]) end
return redis.call('DEL', KEYS[1])
