-- Take a stream slot for this process, unless the caller already holds ``cap`` live ones
-- (shared/streams.py, StreamSlots).
-- KEYS[1] streams:<who>, slots held per process
-- ARGV[1] this process's id
-- ARGV[2] the heartbeat keys' prefix (streams-process:<id>, derived per process)
-- ARGV[3] cap
-- ARGV[4] lease (ms)
-- Returns 1 when the slot is taken, 0 when the caller already holds ``cap`` live ones.
local total = 0
local counts = redis.call('HGETALL', KEYS[1])
for i = 1, #counts, 2 do
  if counts[i] == ARGV[1] or redis.call('EXISTS', ARGV[2] .. counts[i]) == 1 then
    total = total + tonumber(counts[i + 1])
  else
    redis.call('HDEL', KEYS[1], counts[i])  -- a process that died: its streams are gone with it
  end
end
if total >= tonumber(ARGV[3]) then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('SET', ARGV[2] .. ARGV[1], '1', 'PX', ARGV[4])
return 1
