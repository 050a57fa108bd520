-- A spawn task's first step: it becomes the record's current attempt (the number goes up, so an
-- earlier attempt still in flight is superseded: transition.lua refuses its moves) and marks it
-- as between claiming and recording its container (``_spawning``, the attempt's number: a kill
-- task then leaves the removal to it, see worker/spawner.py) (Store.claim_spawn).
-- uses: status, internal
-- KEYS[1] nb:<hostname>, the record
-- No ARGV: the statuses a spawn may start from are SPAWNABLE (shared/status.py).
-- Returns {1, flat hash} with the new ``_attempt``, {0} when missing, {-1, current status} when
-- the record is past spawning.
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {0} end
if not SPAWNABLE[cur] then return {-1, cur} end
local attempt = redis.call('HINCRBY', KEYS[1], INTERNAL.ATTEMPT, 1)
redis.call('HSET', KEYS[1], INTERNAL.SPAWNING, attempt)
return {1, redis.call('HGETALL', KEYS[1])}
