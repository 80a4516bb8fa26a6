-- move_aside.lua: move a key that holds another type than expected out of the way, atomically, once.
-- KEYS[1]  the key (e.g. pbt:{EXP}:member:{M}, pbt:{EXP}:events)
-- KEYS[2]  where it goes: pbt:{EXP}:quarantine:NAME:MS (the same hash tag, so the same slot on a cluster)
-- ARGV[1]  the type a release writes at KEYS[1] (hash, zset, stream, list)
-- Returns the type it moved (a string), or '' when the key is absent or already of the expected type:
-- two arbiters repairing at once move it once, and never a good key another one rebuilt meanwhile.
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'none' or t == ARGV[1] then
  return ''
end
redis.call('RENAME', KEYS[1], KEYS[2])
return t
