-- take_job.lua: the next job for this worker from the first non-empty queue, with its hash, in one
-- round trip: a job whose start checkpoint this worker holds first, within bounds.
-- (On a single Redis node the job hashes are derived from ARGV[1]; on a cluster the worker calls it
-- with one experiment's queue and that experiment's tagged prefix, so every key is in one slot.)
-- KEYS     the queues, in order (rq:queue:NAME)
-- ARGV[1]  the job hash prefix (rq:job:, or rq:job:{EXP} on a cluster)
-- ARGV[2]  this worker's id ("" or absent: no affinity, plain LPOP)
-- ARGV[3]  how many queued jobs to look at (1: plain LPOP)
-- ARGV[4]  how long (ms) a job may be passed over for the worker holding its start checkpoint
-- A job's hash may name that worker in its field pbt_home (the arbiter writes it). In the first
-- ARGV[3] jobs of a queue, this worker takes the first job that is homed here, or homed nowhere,
-- or was passed over longer than ARGV[4] ms ago (its pbt_passed_ms, stamped with Redis's clock
-- when first passed over); if there is none, the head. So it passes over only jobs homed at
-- other workers, and those for a bounded time; the jobs it passes over are stamped. A job hash
-- that is missing or not a hash counts as homed nowhere.
-- Returns {job id, the job hash as HGETALL gives it}, or nil when every queue is empty.
local prefix, me = ARGV[1], ARGV[2] or ''
local window = tonumber(ARGV[3] or '') or 1
local wait_ms = tonumber(ARGV[4] or '') or 0

-- A job hash of another type reads as missing (its job is refused by the worker); any other error
-- (a cluster slot moving) is raised before anything leaves the queue, so no job is lost to it.
local function read(cmd, key, name)
  local v
  if name then v = redis.pcall(cmd, key, name) else v = redis.pcall(cmd, key) end
  if type(v) == 'table' and v.err then
    if string.find(v.err, 'WRONGTYPE', 1, true) then return nil end
    return error(v.err)
  end
  return v
end

local function field(key, name)
  local v = read('HGET', key, name)
  if type(v) == 'string' then return v end
  return nil
end

for _, queue in ipairs(KEYS) do
  local ids = redis.call('LRANGE', queue, 0, math.max(window, 1) - 1)
  if #ids > 0 then
    local pick = 1
    if me ~= '' and window > 1 then
      local t = redis.call('TIME')
      local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
      pick = nil
      for i, id in ipairs(ids) do
        local key = prefix .. id
        local home = field(key, 'pbt_home')
        if home == nil or home == '' or home == me then pick = i break end
        local passed = tonumber(field(key, 'pbt_passed_ms') or '')
        if passed and now - passed >= wait_ms then pick = i break end
      end
      pick = pick or 1
      for i = 1, pick - 1 do
        local key = prefix .. ids[i]
        if redis.call('TYPE', key).ok == 'hash' then redis.call('HSETNX', key, 'pbt_passed_ms', now) end
      end
    end
    local job = read('HGETALL', prefix .. ids[pick]) or {}
    redis.call('LREM', queue, 1, ids[pick])
    return {ids[pick], job}
  end
end
return nil
