-- Shared by join.lua and publish.lua (prepended to each): where a topic's
-- numbering stands, starting a new epoch when the past is gone.
--
-- A topic with no meta lost everything (new, expired, or a Redis restarted
-- empty). A topic whose seq is behind what a node has already seen in the
-- same epoch lost its latest events (a replica promoted before it had
-- them): numbering on from there would give a seq out twice in one epoch.
-- Either way a fresh epoch starts at seq 0, with no log and no kept tokens.
local function current_epoch(meta, log, streams, tokens_prefix, fresh, seen_epoch, seen_seq)
  local epoch = redis.call('HGET', meta, 'e')
  local seq = tonumber(redis.call('HGET', meta, 's') or '0')
  local lost = epoch and epoch == seen_epoch and seq < (tonumber(seen_seq) or 0)
  if epoch and not lost then
    return epoch, seq
  end
  redis.call('DEL', log)
  for _, stream in ipairs(redis.call('SMEMBERS', streams)) do
    redis.call('DEL', tokens_prefix .. stream)
  end
  redis.call('DEL', streams)
  redis.call('HSET', meta, 'e', fresh, 's', 0)
  return fresh, 0
end
