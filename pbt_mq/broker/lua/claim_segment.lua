-- claim_segment.lua: a worker takes a queued segment, atomically, or learns why not.
-- KEYS[1]  pbt:{EXP}:member:{M}  (HASH; reads state, job; writes state, worker, started_ms; deletes limbo_ms)
-- KEYS[2]  pbt:{EXP}:meta        (HASH; reads state)
-- ARGV[1]  the RQ job id being run
-- ARGV[2]  worker id
-- ARGV[3]  now in ms
-- Returns "ok", or the reason to skip: the experiment is not running, or this job is not the
-- member's current one (a stale copy left by a requeue: running it would train twice).
local exp_state = redis.call('HGET', KEYS[2], 'state')
if exp_state ~= 'running' then
  return 'experiment is ' .. tostring(exp_state or 'gone')
end
local job, state = unpack(redis.call('HMGET', KEYS[1], 'job', 'state'))
if job ~= ARGV[1] or state ~= 'queued' then
  return 'stale job (member is ' .. tostring(state) .. ' with job ' .. tostring(job) .. ')'
end
redis.call('HSET', KEYS[1], 'state', 'running', 'worker', ARGV[2], 'started_ms', ARGV[3])
redis.call('HDEL', KEYS[1], 'limbo_ms')
return 'ok'
