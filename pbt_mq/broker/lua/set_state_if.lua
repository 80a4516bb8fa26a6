-- set_state_if.lua: change an experiment's state only from the expected one.
-- KEYS[1]  pbt:{EXP}:meta   (HASH; fields state, reason, done_ms)
-- ARGV[1]  expected state (e.g. "running")
-- ARGV[2]  new state
-- ARGV[3]  reason (free text)
-- ARGV[4]  now in ms
-- Returns 1 if the state changed, 0 if it was not the expected one.
if redis.call('HGET', KEYS[1], 'state') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'reason', ARGV[3], 'done_ms', ARGV[4])
return 1
