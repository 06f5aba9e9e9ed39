-- Where a topic stands, for a node that joins it (or resyncs).
-- KEYS: meta, presence (HASH conn -> entry), streams (SET)
-- ARGV: a fresh epoch (used only when the topic has none), the token lists'
--       key prefix, replay ttl ms
local epoch = redis.call('HGET', KEYS[1], 'e')
local seq = redis.call('HGET', KEYS[1], 's') or '0'
if not epoch then
  epoch = ARGV[1]
  seq = '0'
  redis.call('HSET', KEYS[1], 'e', epoch, 's', 0)
  redis.call('PEXPIRE', KEYS[1], math.max(tonumber(ARGV[3]), 86400000))
end
local tokens = {}
for _, stream in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  for _, token in ipairs(redis.call('LRANGE', ARGV[2] .. stream, 0, -1)) do
    table.insert(tokens, token)
  end
end
return {epoch, seq, redis.call('HVALS', KEYS[2]), tokens}
