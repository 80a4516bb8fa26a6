-- ancestry.lua: the checkpoints the given heads descend from, following start keys.
-- KEYS[1]  pbt:{EXP}:parents  (HASH; checkpoint key -> the checkpoint its segment started from; read only)
-- ARGV[1]  how many ancestors to follow per head (-1: all)
-- ARGV[2..] the heads (checkpoint keys)
-- Returns every checkpoint key on those lineages, heads included, each once.
local depth = tonumber(ARGV[1])
local seen, out = {}, {}
for i = 2, #ARGV do
  local key, n = ARGV[i], 0
  while key and key ~= '' and not seen[key] and (depth < 0 or n <= depth) do
    seen[key] = true
    out[#out + 1] = key
    key = redis.call('HGET', KEYS[1], key)
    n = n + 1
  end
end
return out
