-- Make the quota sets agree with the records: drop members that no longer take a slot and add
-- the given hostnames whose record does, each checked here, atomically (Store.sync_live).
-- uses: status
-- KEYS[1] live:all
-- ARGV[1] nb:, the record keys' prefix (nb:<h> is derived per hostname)
-- ARGV[2] live:user:, the per-user quota sets' prefix (live:user:<u> is derived from a record's user)
-- ARGV[3..] hostnames of live records
-- Returns {removed, added}.
local removed, added = 0, 0
for _, h in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = ARGV[1] .. h
  local st = redis.call('HGET', key, 'status')
  if not st or not COUNTED[st] then
    redis.call('SREM', KEYS[1], h)
    local user = redis.call('HGET', key, 'user')
    if user then redis.call('SREM', ARGV[2] .. user, h) end
    removed = removed + 1
  end
end
for i = 3, #ARGV do
  local key = ARGV[1] .. ARGV[i]
  local st = redis.call('HGET', key, 'status')
  if st and COUNTED[st] then
    local user = redis.call('HGET', key, 'user') or ''
    added = added + redis.call('SADD', KEYS[1], ARGV[i])
    redis.call('SADD', ARGV[2] .. user, ARGV[i])
  end
end
return {removed, added}
