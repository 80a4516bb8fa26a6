-- take_job.lua: the next job of the first non-empty queue, with its hash, in one round trip
-- (single Redis node only: the job's hash key is derived here; a cluster worker sweeps instead).
-- KEYS     the queues, in order (rq:queue:NAME)
-- ARGV[1]  the job hash prefix (rq:job:)
-- Returns {job id, the job hash as HGETALL gives it}, or nil when every queue is empty.
for _, queue in ipairs(KEYS) do
  local id = redis.call('LPOP', queue)
  if id then
    return {id, redis.call('HGETALL', ARGV[1] .. id)}
  end
end
return nil
