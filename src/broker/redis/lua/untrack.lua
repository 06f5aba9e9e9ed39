-- Removes a presence entry; announces its leave only if there was one.
-- KEYS: presence (HASH), the node's entry index (SET), channel
-- ARGV: conn, index member, op ('' for none)
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if not entry then
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2], ARGV[2])
redis.call('PUBLISH', KEYS[3], 'l|' .. ARGV[3] .. '|' .. entry)
return 1
