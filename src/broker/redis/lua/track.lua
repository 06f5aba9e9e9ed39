-- Adds or replaces a presence entry and announces it. Keeps how many
-- entries each key has, so the call that gives a key its first entry (or
-- takes a replaced entry's key to none) knows it, cluster-wide.
-- KEYS: presence (HASH), the node's entry index (SET), channel, key counts (HASH)
-- ARGV: conn, entry (JSON), index member, op ('' for none), the entry's key
-- Answers {1 if the key got its first entry else 0, the replaced entry
-- (JSON) if its key now has none, else ''}.
local old = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('PUBLISH', KEYS[3], 'j|' .. ARGV[4] .. '|' .. ARGV[2])
local old_key = nil
if old then
  local ok, entry = pcall(cjson.decode, old)
  if ok then
    old_key = entry.key
  end
end
local joined, left = 0, ''
if old_key ~= ARGV[5] then
  if redis.call('HINCRBY', KEYS[4], ARGV[5], 1) == 1 then
    joined = 1
  end
  if old_key and redis.call('HINCRBY', KEYS[4], old_key, -1) <= 0 then
    redis.call('HDEL', KEYS[4], old_key)
    left = old
  end
end
return {joined, left}
