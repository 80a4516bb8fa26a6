-- move_job.lua: hand a segment waiting in a busy worker's own queue to the shared queue, once.
-- KEYS[1]  rq:queue:{QUEUE}@{ID}   (LIST; the worker's own queue: LREM the job id)
-- KEYS[2]  rq:queue:{QUEUE}        (LIST; the shared queue: RPUSH the job id)
-- KEYS[3]  pbt:{EXP}:member:{M}    (HASH; writes queue)
-- ARGV[1]  the RQ job id           ARGV[2] the shared queue's name
-- Returns 1 if moved, 0 if the job had already left the worker's queue (it took it meanwhile).
-- Single Redis only: worker queues are not used on a Redis Cluster.
if redis.call('LREM', KEYS[1], 0, ARGV[1]) == 0 then
  return 0
end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], 'queue', ARGV[2])
return 1
