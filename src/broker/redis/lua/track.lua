-- Adds or replaces a presence entry and announces it.
-- KEYS: presence (HASH), the node's entry index (SET), channel
-- ARGV: conn, entry (JSON), index member, op ('' for none)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('PUBLISH', KEYS[3], 'j|' .. ARGV[4] .. '|' .. ARGV[2])
return 1
