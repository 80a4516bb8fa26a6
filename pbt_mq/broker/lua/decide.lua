-- decide.lua: record a member's new score and pick its donor, in one round trip and O(log n).
-- KEYS[1]  pbt:{EXP}:member:{M}  (HASH; reads seq, state)
-- KEYS[2]  pbt:{EXP}:scores      (ZSET; every member's latest score: writes the member's, ZREM when unusable)
-- KEYS[3]  pbt:{EXP}:ckpts       (HASH; writes member -> its scored checkpoint (JSON); reads the donor's)
-- KEYS[4]  pbt:{EXP}:meta        (HASH; reads state)
-- KEYS[5]  the board the member is ranked on: KEYS[2] itself (compare = latest), pbt:{EXP}:eligible (compare =
--          latest with a burn-in: the latest scores at steps >= ARGV[12]), or pbt:{EXP}:board:{B}, the others'
--          scores at the member's ready point B (compare = step); a board other than KEYS[2] holds a member only
--          while its score is finite and its step >= ARGV[12] (ZADD / ZREM the member)
-- KEYS[6]  pbt:{EXP}:boards      (ZSET; B -> B, written when ranking on a board)
-- KEYS[7]  pbt:{EXP}:reached     (ZSET; member -> B, written when ranking on a board)
-- ARGV[1] member id           ARGV[2] the event's seq      ARGV[3] leaderboard score (higher is better)
-- ARGV[4] 1 if the score is finite, else 0                 ARGV[5] the checkpoint record (JSON)
-- ARGV[6] rule: truncation | tournament | none             ARGV[7] quantile
-- ARGV[8] u, the decision's uniform draw in [0, 1)         ARGV[9] return the board when n <= this
-- ARGV[10] ties: strict (equal scores never exploit) | rank (ties ranked as in ZREVRANGE)
--           | random (the member's place among its ties, or a tournament's coin, from u)
-- ARGV[11] B, the board's ready point ('' unless KEYS[5] is a per-step board)
-- ARGV[12] burn_in_steps: no score from a step below it goes on a board (0: none)
-- ARGV[13] the member's step
-- ARGV[14] exploit.synch: the round, the member's ready point ('' when asynchronous, or for a final decision):
--          ZADD KEYS[7]; while a live member's last ready point in KEYS[7] is below it, reply 'wait'
-- KEYS[8]  pbt:{EXP}:windows     (HASH; member -> its last ARGV[15] scores, space separated, oldest first: the
--          window of the checkpoint in KEYS[3]; written only when ARGV[15] > 1)
-- ARGV[15] exploit.window k: with k > 1 the member's window is the 'window' field of KEYS[1] (its segment's
--          start checkpoint's, written by the commit) plus this score, its last k kept, and the member is ranked
--          on their mean (rules.window mirrors it: the same sum, in the same order)
-- Returns {status, meta_state, n, worse, better, k, donor, donor_score, donor_record, own_window, donor_window,
--          board...} (the windows '' unless ARGV[15] > 1)
--   status 'dup': the seq is already decided or the member ended (nothing written);
--   status 'ahead': the member is at an older seq than the event (nothing written);
--   status 'bad': the member's seq is not a number (written by hand; nothing written: {'bad', field});
--   status 'wait': the score is recorded but the round is not complete ({'wait', meta_state}).
--   A donor with no scored checkpoint (its latest score was not finite) comes back with an empty record.
-- Mirrors rules.exploit exactly, on the board KEYS[5]: ties rank as in ZREVRANGE (member id descending);
-- ties = random splits u as the pure rule does (u * (t + 1) = j + the rest), with no other draw.
local seq, state = unpack(redis.call('HMGET', KEYS[1], 'seq', 'state'))
if state == 'done' or state == 'failed' then
  return {'dup'}
end
if seq and not tonumber(seq) then  -- written by hand: the reaper fails the member; this event waits for it
  return {'bad', 'seq'}
end
if seq and tonumber(seq) > tonumber(ARGV[2]) then
  return {'dup'}
end
if not seq or tonumber(seq) < tonumber(ARGV[2]) then
  return {'ahead', tostring(seq)}
end
local member, score, finite = ARGV[1], ARGV[3], ARGV[4] == '1'
local board = KEYS[5]
local window_k = tonumber(ARGV[15]) or 1
local own_window = ''
if window_k > 1 and finite then
  local values = {}
  for v in string.gmatch(redis.call('HGET', KEYS[1], 'window') or '', '%S+') do
    local x = tonumber(v)  -- anything else written there (by hand) is skipped, never an error
    if x and x == x and x ~= math.huge and x ~= -math.huge then
      values[#values + 1] = x
    end
  end
  values[#values + 1] = tonumber(score)
  local kept, sum = {}, 0
  for i = math.max(1, #values - window_k + 1), #values do
    kept[#kept + 1] = string.format('%.17g', values[i])
    sum = sum + values[i]
  end
  own_window = table.concat(kept, ' ')
  score = string.format('%.17g', sum / #kept)
  redis.call('HSET', KEYS[8], member, own_window)
elseif window_k > 1 then
  redis.call('HDEL', KEYS[8], member)
end
if finite then
  redis.call('ZADD', KEYS[2], score, member)
  redis.call('HSET', KEYS[3], member, ARGV[5])
else
  redis.call('ZREM', KEYS[2], member)
  redis.call('HDEL', KEYS[3], member)
end
local counted = finite  -- whether the member is on its own board
if board ~= KEYS[2] then
  counted = finite and tonumber(ARGV[13]) >= tonumber(ARGV[12])
  if counted then
    redis.call('ZADD', board, score, member)
  else
    redis.call('ZREM', board, member)
  end
  if ARGV[11] ~= '' then
    redis.call('ZADD', KEYS[6], ARGV[11], ARGV[11])
    redis.call('ZADD', KEYS[7], ARGV[11], member)
  end
end
local meta_state = redis.call('HGET', KEYS[4], 'state') or ''
if ARGV[14] ~= '' then
  redis.call('ZADD', KEYS[7], ARGV[14], member)
  local slowest = redis.call('ZRANGE', KEYS[7], 0, 0, 'WITHSCORES')
  if tonumber(slowest[2]) < tonumber(ARGV[14]) then
    return {'wait', meta_state}
  end
end
local others = redis.call('ZCARD', board) - (counted and 1 or 0)
local n = others + 1
local rule, u = ARGV[6], tonumber(ARGV[8])
local k = math.min(math.ceil(n * tonumber(ARGV[7])), math.floor(n / 2))
local by_rank = counted and ARGV[10] == 'rank'  -- (a member not on its board is never ranked: rule none)
local by_draw = counted and ARGV[10] == 'random'
local worse = finite and redis.call('ZCOUNT', board, '-inf', '(' .. score) or 0
local better = finite and redis.call('ZCOUNT', board, '(' .. score, '+inf') or others
if by_rank then
  worse = redis.call('ZRANK', board, member)
  better = redis.call('ZREVRANK', board, member)
end
if by_draw and rule == 'truncation' then
  local tied = redis.call('ZCOUNT', board, score, score) - 1  -- the others tied with the member
  local scaled = u * (tied + 1)
  local above = math.floor(scaled)  -- how many of them rank above it
  u = scaled - above
  better = better + above
  worse = worse + tied - above
end
local index, coin = -1, 0
if rule == 'truncation' then
  local candidates = math.min(k, better)
  if worse < k and candidates > 0 then
    index = math.floor(u * candidates)
    if by_draw and index >= redis.call('ZREVRANK', board, member) then
      index = index + 1  -- an index among the others: step over the member's own place
    end
  end
elseif rule == 'tournament' and others > 0 then
  index = math.floor(u * others)
  coin = u * others - index
  local own_rank = finite and redis.call('ZREVRANK', board, member) or nil
  if own_rank and index >= own_rank then
    index = index + 1
  end
end
local donor, donor_score, record, donor_window = '', '', '', ''
if index >= 0 then
  local hit = redis.call('ZREVRANGE', board, index, index, 'WITHSCORES')
  local better_than_own = (not finite) or (tonumber(hit[2]) > tonumber(score))
  if by_rank and hit[1] then
    better_than_own = index < redis.call('ZREVRANK', board, member)
  elseif by_draw and hit[1] then
    if rule == 'truncation' then
      better_than_own = true  -- index < min(k, better): one of the others drawn above the member
    elseif tonumber(hit[2]) == tonumber(score) then
      better_than_own = coin < 0.5
    end
  end
  if hit[1] and better_than_own then
    donor, donor_score = hit[1], hit[2]
    record = redis.call('HGET', KEYS[3], donor) or ''
    if window_k > 1 then
      donor_window = redis.call('HGET', KEYS[8], donor) or ''
    end
  end
end
local reply = {'ok', meta_state, n, worse, better, k, donor, donor_score, record, own_window, donor_window}
if n <= tonumber(ARGV[9]) then
  local entries = redis.call('ZREVRANGE', board, 0, -1, 'WITHSCORES')
  for i = 1, #entries do
    reply[#reply + 1] = entries[i]
  end
end
return reply
