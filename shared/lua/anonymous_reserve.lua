-- Take a slot for one anonymous launch from a client, under ANONYMOUS_PER_ADDRESS and
-- ANONYMOUS_SPAWN_RATE (api/anonymous.py, AnonymousLimits.reserve).
-- uses: status
-- KEYS[1] anon:live:<key>, the client's live notebooks and reservations ('?<nonce>')
-- KEYS[2] anon:rate:<key>, the client's launches by time
-- ARGV[1] the record keys' prefix (nb:<h>, derived per member)
-- ARGV[2] now (epoch)
-- ARGV[3] live limit
-- ARGV[4] rate limit
-- ARGV[5] rate window (seconds)
-- ARGV[6] nonce
-- ARGV[7] when the reservation lapses (epoch)
-- ARGV[8] seconds the keys live
-- Returns {1} with the slot taken, or {0, 'live'|'rate', limit, oldest rate entry's score or ''}.
local now = tonumber(ARGV[2])
local members = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #members, 2 do
  local m, score = members[i], tonumber(members[i + 1])
  local keep
  if string.sub(m, 1, 1) == '?' then
    keep = score > now
  else
    local st = redis.call('HGET', ARGV[1] .. m, 'status')
    keep = st and COUNTED[st]
  end
  if not keep then redis.call('ZREM', KEYS[1], m) end
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return {0, 'live', ARGV[3], ''} end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. tostring(now - tonumber(ARGV[5])))
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  return {0, 'rate', ARGV[4], oldest[2] or ''}
end
redis.call('ZADD', KEYS[1], ARGV[7], '?' .. ARGV[6])
redis.call('ZADD', KEYS[2], now, ARGV[6])
redis.call('EXPIRE', KEYS[1], ARGV[8])
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[5]) + 1)
return {1}
