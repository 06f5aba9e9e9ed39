-- Which nodes have subscribers on a topic, so the cluster tells the app's
-- backend once when the topic gets its first subscriber anywhere and once
-- when it loses its last. Answers 1 when this call made that change.
-- KEYS: the topic's nodes (SET), the node's topics (SET, for reaping)
-- ARGV: node, topic, '1' (this node has subscribers now) or '0' (none)
if ARGV[3] == '1' then
  local added = redis.call('SADD', KEYS[1], ARGV[1])
  redis.call('SADD', KEYS[2], ARGV[2])
  if added == 1 and redis.call('SCARD', KEYS[1]) == 1 then
    return 1
  end
  return 0
end
local removed = redis.call('SREM', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2], ARGV[2])
if removed == 1 and redis.call('SCARD', KEYS[1]) == 0 then
  return 1
end
return 0
