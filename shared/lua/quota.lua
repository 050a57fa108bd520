-- Library: the quota check the create script (create.lua) and the pool's claim (pool_claim.lua)
-- run before they write anything, and the rate log entry they write after (shared/limits.py).
-- quota_refusal(...) returns nil when the spawn may go ahead, else
-- {-2, which limit ('total', 'user' or 'rate'), the limit, the oldest rate entry's score or ''}.
local function quota_refusal(total_key, user_key, rate_key, max_total, max_user, rate, window, now)
  if max_total > 0 and redis.call('SCARD', total_key) >= max_total then return {-2, 'total', max_total, ''} end
  if max_user > 0 and redis.call('SCARD', user_key) >= max_user then return {-2, 'user', max_user, ''} end
  if rate > 0 then
    redis.call('ZREMRANGEBYSCORE', rate_key, '-inf', '(' .. tostring(now - window))
    if redis.call('ZCARD', rate_key) >= rate then
      local oldest = redis.call('ZRANGE', rate_key, 0, 0, 'WITHSCORES')
      return {-2, 'rate', rate, oldest[2] or ''}
    end
  end
  return nil
end
local function quota_record(rate_key, rate, window, now, hostname)
  if rate > 0 then
    redis.call('ZADD', rate_key, now, hostname)
    redis.call('EXPIRE', rate_key, window + 1)
  end
end
