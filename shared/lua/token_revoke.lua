-- Revoke a user token: its record, its lookup key, its index entry and every /manage session
-- signed in with it (shared/tokenstore.py, Tokens.revoke).
-- KEYS[1] token:<id>, the token
-- KEYS[2] idx:tokens
-- KEYS[3] token-sessions:<id>, the sessions signed in with it
-- ARGV[1] token id
-- ARGV[2] the lookup keys' prefix (tokenhash:<sha>, derived from the token's stored digest)
-- ARGV[3] the session keys' prefix (session:<id>, derived from KEYS[3]'s members)
-- ARGV[4] control channel
-- ARGV[5] control message
-- Returns 0 when the token is already gone, else 1.
local sha = redis.call('HGET', KEYS[1], 'sha256')
if not sha then return 0 end
redis.call('DEL', KEYS[1], ARGV[2] .. sha)
redis.call('ZREM', KEYS[2], ARGV[1])
for _, id in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  redis.call('DEL', ARGV[3] .. id)
end
redis.call('DEL', KEYS[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
