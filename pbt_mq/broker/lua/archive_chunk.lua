-- archive_chunk.lua: move one chunk of the lineage log out of Redis, exactly once: only if the stream still starts
-- at the chunk's first entry and still holds its last one (else another arbiter moved it first).
-- KEYS[1] pbt:{EXP}:lineage   KEYS[2] pbt:{EXP}:archive
-- ARGV[1] first entry id   ARGV[2] last entry id   ARGV[3] the id after the last   ARGV[4] chunk JSON
-- Returns 1 when this call moved it, 0 when it was not this call's to move.
local head = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if #head == 0 or head[1][1] ~= ARGV[1] then
  return 0
end
if #redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2]) == 0 then
  return 0
end
redis.call('RPUSH', KEYS[2], ARGV[4])
redis.call('XTRIM', KEYS[1], 'MINID', ARGV[3])
return 1
