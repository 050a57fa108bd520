-- Count a spawn's outcome, once per notebook (shared/metrics.py, Metrics.spawn_settled). The
-- record's ``_counted`` field is the guard: a repeated move (a redelivered task, a retried write)
-- and a later move (ACTIVE, then FAILED or DELETING) count nothing more.
-- uses: internal
-- KEYS[1] nb:<hostname>, the record
-- KEYS[2] metrics, the counters hash
-- ARGV[1] outcome ('active', 'failed' or 'killed')
-- ARGV[2] latency in seconds ('' for none)
-- ARGV[3..] the latency histogram's bucket bounds
-- Returns 1 when counted, 0 when already counted (or the record is gone).
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HSETNX', KEYS[1], INTERNAL.COUNTED, ARGV[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[2], 'spawns:' .. ARGV[1], 1)
if ARGV[2] ~= '' then
  local seconds = tonumber(ARGV[2])
  for i = 3, #ARGV do
    if seconds <= tonumber(ARGV[i]) then redis.call('HINCRBY', KEYS[2], 'latency:le:' .. ARGV[i], 1) end
  end
  redis.call('HINCRBY', KEYS[2], 'latency:count', 1)
  redis.call('HINCRBYFLOAT', KEYS[2], 'latency:sum', ARGV[2])
end
return 1
