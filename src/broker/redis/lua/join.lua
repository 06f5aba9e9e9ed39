-- Where a topic stands, for a node that joins it (or resyncs).
-- KEYS: meta, presence (HASH conn -> entry), streams (SET), log
-- ARGV: a fresh epoch (used only when the topic needs one: epoch.lua), the
--       token lists' key prefix, replay ttl ms, the epoch and seq this node
--       has seen ('' and 0 on a first join)
local epoch, seq = current_epoch(KEYS[1], KEYS[4], KEYS[3], ARGV[2], ARGV[1], ARGV[4], ARGV[5])
if seq == 0 then
  redis.call('PEXPIRE', KEYS[1], math.max(tonumber(ARGV[3]), 86400000))
end
local tokens = {}
for _, stream in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  for _, token in ipairs(redis.call('LRANGE', ARGV[2] .. stream, 0, -1)) do
    table.insert(tokens, token)
  end
end
return {epoch, tostring(seq), redis.call('HVALS', KEYS[2]), tokens}
