-- Removes a presence entry; announces its leave only if there was one.
-- KEYS: presence (HASH), the node's entry index (SET), channel, key counts (HASH)
-- ARGV: conn, index member, op ('' for none)
-- Answers {1 if there was an entry else 0, the entry (JSON) if its key now
-- has none, else ''}.
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if not entry then
  return {0, ''}
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2], ARGV[2])
redis.call('PUBLISH', KEYS[3], 'l|' .. ARGV[3] .. '|' .. entry)
local ok, gone = pcall(cjson.decode, entry)
if ok and gone.key and redis.call('HINCRBY', KEYS[4], gone.key, -1) <= 0 then
  redis.call('HDEL', KEYS[4], gone.key)
  return {1, entry}
end
return {1, ''}
