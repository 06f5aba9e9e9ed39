-- Makes one of a node's event streams reachable from every node: which
-- node holds it, and a hash of its session secret (the secret itself is
-- not kept).
-- KEYS: the stream's key, the node's stream index (SET)
-- ARGV: node, secret, conn
redis.call('SET', KEYS[1], ARGV[1] .. '\n' .. redis.sha1hex(ARGV[2]))
redis.call('SADD', KEYS[2], ARGV[3])
return 1
