-- Write the replication mark only while the record is there with the field as allowed
-- (shared/failover.py, Replication.confirm: the mark is what WAIT then waits for).
-- KEYS[1] the record
-- KEYS[2] replicated, the mark
-- ARGV[1] a field of the record
-- ARGV[2] the values it may have as ',A,B,' ('' any)
-- ARGV[3] the mark's value
-- Returns 1 when written, 0 when not.
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then return 0 end
if ARGV[2] ~= '' and not string.find(ARGV[2], ',' .. value .. ',', 1, true) then return 0 end
redis.call('SET', KEYS[2], ARGV[3], 'PX', 60000)
return 1
