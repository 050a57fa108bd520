-- ZREVRANGE as one string, the members joined by commas: one value to read, split in C, instead
-- of thousands parsed one by one (Store._index_range).
-- KEYS[1] the sorted set (an index: idx:all, idx:user:<u>, idx:status:<s>)
-- ARGV[1] start
-- ARGV[2] stop
-- Returns the members, newest first, joined by commas ('' for none).
return table.concat(redis.call('ZREVRANGE', KEYS[1], ARGV[1], ARGV[2]), ',')
