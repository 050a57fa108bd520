-- Some fields of many records, for listings (Store._chunks_of).
-- No KEYS: the record keys are derived, one per hostname (ARGV[1] .. hostname).
-- ARGV[1] the record keys' prefix (<prefix>nb:)
-- ARGV[2] n, the number of fields
-- ARGV[3..2+n] field1..fieldn
-- ARGV[3+n] hostnames joined by commas
-- Returns, as one JSON string, [[value1..valuen], ...] per hostname, in the fields' order.
-- Listings read thousands of records: one script call per chunk instead of one command each
-- (redis-py's per-command cost was most of GET /containers), and one JSON string to decode
-- instead of a value each (the pure-Python reply parser's per-value cost was the rest). The
-- hostnames come as one argument: packing (and Redis parsing) 250 arguments per call cost more
-- than the split. A missing field is "" (every stored field's default but the status's, and the
-- status is always stored), and a record whose first field is missing (it vanished between
-- reading the index and the hash: retention) is left out, so the values need no checking per
-- field in Python.
local n = tonumber(ARGV[2])
local fields = {unpack(ARGV, 3, 2 + n)}
local out = {}
for h in string.gmatch(ARGV[3 + n], '[^,]+') do
  local v = redis.call('HMGET', ARGV[1] .. h, unpack(fields))
  if v[1] then
    for j = 2, n do
      if not v[j] then v[j] = '' end
    end
    out[#out + 1] = v
  end
end
return cjson.encode(out)
