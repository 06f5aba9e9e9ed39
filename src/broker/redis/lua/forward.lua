-- Passes requests to the node holding an event stream, if the secret is
-- the stream's. Answers how many nodes took them (0: no such stream, a
-- wrong secret, or its node is gone; then the stale key goes too).
-- KEYS: the stream's key
-- ARGV: key prefix, secret, payload
local holder = redis.call('GET', KEYS[1])
if not holder then
  return 0
end
local cut = string.find(holder, '\n', 1, true)
if not cut or string.sub(holder, cut + 1) ~= redis.sha1hex(ARGV[2]) then
  return 0
end
local node = string.sub(holder, 1, cut - 1)
local taken = redis.call('PUBLISH', ARGV[1] .. 'node:' .. node .. ':sse', ARGV[3])
if taken == 0 then
  redis.call('DEL', KEYS[1])
end
return taken
