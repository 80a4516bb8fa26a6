-- set_current.lua: a worker says what it runs now, between heartbeats, only while it is alive.
-- KEYS[1]  pbt:worker:{ID}   (HASH; writes current if the key exists: never revives an expired one)
-- ARGV[1]  "EXP/M/SEQ" of the segment it claimed, or "" once it published
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('HSET', KEYS[1], 'current', ARGV[1])
end
return 0
