-- Write a new PENDING record with its index entries and quota slot, unless the hostname is taken
-- or a quota refuses it: the check and the write are one atomic step (Store.create).
-- uses: quota, record_event
-- KEYS[1] nb:<hostname>, the record
-- KEYS[2] idx:all
-- KEYS[3] idx:user:<user>
-- KEYS[4] idx:status:PENDING
-- KEYS[5] live:all
-- KEYS[6] live:user:<user>
-- KEYS[7] rate:<user>
-- ARGV[1] score (creation time, epoch)
-- ARGV[2] hostname
-- ARGV[3] events channel
-- ARGV[4] most notebooks in total (0: no limit)
-- ARGV[5] most notebooks per user (0: no limit)
-- ARGV[6] spawn rate (0: no limit)
-- ARGV[7] rate window (seconds)
-- ARGV[8] now (epoch)
-- ARGV[9..] field1, value1, field2, value2, ...: the record's hash
-- Returns 1 when written, 0 when the hostname is taken, {-2, ...} when a quota refuses it (quota.lua).
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local refusal = quota_refusal(KEYS[5], KEYS[6], KEYS[7], tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]),
                              tonumber(ARGV[7]), tonumber(ARGV[8]))
if refusal then return refusal end
redis.call('HSET', KEYS[1], unpack(ARGV, 9))
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[5], ARGV[2])
redis.call('SADD', KEYS[6], ARGV[2])
quota_record(KEYS[7], tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[2])
redis.call('PUBLISH', ARGV[3], record_event({unpack(ARGV, 9)}))
return 1
