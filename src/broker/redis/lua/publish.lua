-- Sequences a batch of events of one topic and sends them to every node.
-- KEYS: meta (HASH e=epoch s=last seq), log (STREAM, id <seq>-0, exactly
--       the last `replay size` entries),
--       channel, streams (SET of running token streams)
-- ARGV: replay size, replay ttl ms, a fresh epoch (used only when the topic
--       needs one: epoch.lua), the token lists' key prefix, the epoch and
--       seq the publishing node has seen, then per event: stream id
--       ('' when none), '1' when it ends the stream, payload.
local epoch, seq = current_epoch(KEYS[1], KEYS[2], KEYS[4], ARGV[4], ARGV[3], ARGV[5], ARGV[6])
local first = seq + 1
local payloads = {}
for i = 7, #ARGV, 3 do
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
  table.insert(payloads, payload)
end
-- One message for the whole batch (compact JSON holds no raw newline).
redis.call('PUBLISH', KEYS[3], 'b|' .. epoch .. '|' .. first .. '|' .. table.concat(payloads, '\n'))
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[1], math.max(tonumber(ARGV[2]), 86400000))
return {epoch, first}
