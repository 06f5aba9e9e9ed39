-- Removes the presence entries of nodes that stopped beating (or of one
-- named node, at its shutdown), announcing each leave exactly once: the
-- script is atomic, so two nodes reaping at once cannot both announce.
-- Their event streams' keys go too, and they leave the topics they had
-- subscribers on.
-- Answers {entries removed, topics left without a subscriber on any node,
-- presence keys left without an entry ("<topic>\n<key>\n<state>")}: the
-- reaping node tells the app's backend of those.
-- KEYS: nodes (ZSET node -> last beat ms)
-- ARGV: key prefix, deadline ms (beats at or before it are dead), a node
--       to reap regardless ('' for none)
local dead
if ARGV[3] ~= '' then
  dead = {ARGV[3]}
else
  dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
end
local left = 0
local vacated = {}
local keys_left = {}
for _, node in ipairs(dead) do
  local index = ARGV[1] .. 'node:' .. node .. ':pres'
  for _, member in ipairs(redis.call('SMEMBERS', index)) do
    local cut = string.find(member, '\n', 1, true)
    if cut then
      local topic = string.sub(member, 1, cut - 1)
      local conn = string.sub(member, cut + 1)
      local presence = ARGV[1] .. '{' .. topic .. '}:pres'
      local entry = redis.call('HGET', presence, conn)
      if entry then
        redis.call('HDEL', presence, conn)
        redis.call('PUBLISH', ARGV[1] .. '{' .. topic .. '}', 'l||' .. entry)
        left = left + 1
        local ok, gone = pcall(cjson.decode, entry)
        if ok and gone.key then
          local counts = ARGV[1] .. '{' .. topic .. '}:keys'
          if redis.call('HINCRBY', counts, gone.key, -1) <= 0 then
            redis.call('HDEL', counts, gone.key)
            table.insert(keys_left, topic .. '\n' .. gone.key .. '\n' .. cjson.encode(gone.state))
          end
        end
      end
    end
  end
  redis.call('DEL', index)
  local streams = ARGV[1] .. 'node:' .. node .. ':streams'
  for _, conn in ipairs(redis.call('SMEMBERS', streams)) do
    redis.call('DEL', ARGV[1] .. 'stream:' .. conn)
  end
  redis.call('DEL', streams)
  local occupied = ARGV[1] .. 'node:' .. node .. ':topics'
  for _, topic in ipairs(redis.call('SMEMBERS', occupied)) do
    local nodes = ARGV[1] .. '{' .. topic .. '}:nodes'
    if redis.call('SREM', nodes, node) == 1 and redis.call('SCARD', nodes) == 0 then
      table.insert(vacated, topic)
    end
  end
  redis.call('DEL', occupied)
  redis.call('DEL', ARGV[1] .. 'node:' .. node)
  redis.call('ZREM', KEYS[1], node)
end
return {left, vacated, keys_left}
