-- Write a /manage session; one signed in with a user token only while the token exists
-- (shared/tokenstore.py, Sessions.create).
-- KEYS[1] session:<id>, the session
-- KEYS[2] token:<id>, the token (a user token's session only)
-- KEYS[3] token-sessions:<id>, the token's sessions (a user token's session only)
-- ARGV[1] seconds to live
-- ARGV[2] session id
-- ARGV[3..] field1, value1, ...: the session
-- Returns 0 (and writes nothing) when the token is gone, else 1.
if #KEYS > 1 then
  if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
  redis.call('SADD', KEYS[3], ARGV[2])
  redis.call('EXPIRE', KEYS[3], ARGV[1])
end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
