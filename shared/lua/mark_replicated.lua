-- Write the replication mark only while the record is there with the field as allowed
-- (shared/failover.py, Replication.confirm: the mark is what WAIT then waits for).
-- KEYS[1] the record
-- KEYS[2] replicated, the mark
-- ARGV[1] a field of the record
-- ARGV[2] the mark's value
-- ARGV[3..] the values the field may have (none: any)
-- Returns 1 when written, 0 when not.
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then return 0 end
if #ARGV > 2 then
  local allowed = false
  for i = 3, #ARGV do
    if ARGV[i] == value then allowed = true end
  end
  if not allowed then return 0 end
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', 60000)
return 1
