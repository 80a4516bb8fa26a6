-- publish.lua: a worker publishes its segment's ready event, only if its job still owns the member
-- and the experiment still runs; atomically, in one round trip.
-- KEYS[1]  pbt:{EXP}:member:{M}  (HASH; reads job, state, worker; writes state)
-- KEYS[2]  pbt:{EXP}:meta        (HASH; reads state)
-- KEYS[3]  pbt:{EXP}:events      (STREAM; appends the event: member, seq, step, score, msg)
-- KEYS[4]  pbt:{EXP}:uploading   (ZSET; the checkpoint leaves it when stored)
-- KEYS[5]  pbt:{EXP}:stored      (ZSET; the checkpoint joins it when stored)
-- ARGV[1] job id  ARGV[2] worker id  ARGV[3] member  ARGV[4] seq  ARGV[5] step  ARGV[6] score
-- ARGV[7] msg (the msgpack ReadyEvent)  ARGV[8] checkpoint key  ARGV[9] "1" if in the store now  ARGV[10] now ms
-- Returns "published", "superseded" (a requeued copy owns the member) or "ended".
local job, state, worker = unpack(redis.call('HMGET', KEYS[1], 'job', 'state', 'worker'))
if job ~= ARGV[1] or state ~= 'running' or worker ~= ARGV[2] then
  return 'superseded'
end
if redis.call('HGET', KEYS[2], 'state') ~= 'running' then
  return 'ended'
end
redis.call('XADD', KEYS[3], '*', 'member', ARGV[3], 'seq', ARGV[4], 'step', ARGV[5], 'score', ARGV[6], 'msg', ARGV[7])
redis.call('HSET', KEYS[1], 'state', 'ready')
if ARGV[9] == '1' then
  redis.call('ZREM', KEYS[4], ARGV[8])
  redis.call('ZADD', KEYS[5], ARGV[10], ARGV[8])
end
return 'published'
