-- Sequences a batch of events of one topic and sends them to every node.
-- KEYS: meta (HASH e=epoch s=last seq), log (STREAM, id <seq>-0, exactly
--       the last `replay size` entries),
--       channel, streams (SET of running token streams)
-- ARGV: replay size, replay ttl ms, a fresh epoch (used only when the topic
--       has none), the token lists' key prefix, then per event: stream id
--       ('' when none), '1' when it ends the stream, payload.
local epoch = redis.call('HGET', KEYS[1], 'e')
local seq = tonumber(redis.call('HGET', KEYS[1], 's') or '0')
if not epoch then
  -- Nothing is known of this topic (new, expired, or Redis lost its data):
  -- a new epoch, so no seq is ever given out twice within one.
  epoch = ARGV[3]
  seq = 0
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 's', 0)
end
local first = seq + 1
for i = 5, #ARGV, 3 do
  local stream, ends, payload = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  seq = seq + 1
  -- The log entry goes first: a script that fails midway leaves no seq
  -- given out without its event.
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[1], seq .. '-0', 'p', payload)
  redis.call('HSET', KEYS[1], 's', seq)
  if stream ~= '' then
    local tokens = ARGV[4] .. stream
    if ends == '1' then
      redis.call('DEL', tokens)
      redis.call('SREM', KEYS[4], stream)
    else
      if redis.call('LLEN', tokens) < 20000 then
        redis.call('RPUSH', tokens, seq .. '|' .. payload)
      end
      redis.call('PEXPIRE', tokens, 3600000)
      redis.call('SADD', KEYS[4], stream)
      redis.call('PEXPIRE', KEYS[4], 3600000)
    end
  end
  redis.call('PUBLISH', KEYS[3], 'e|' .. epoch .. '|' .. seq .. '|' .. payload)
end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[1], math.max(tonumber(ARGV[2]), 86400000))
return {epoch, first}
