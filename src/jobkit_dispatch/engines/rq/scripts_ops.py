"""The Lua scripts behind the operator capabilities: list, retry, purge, and the trimming
of expired index entries that keeps listing cheap.

Listing reads two kinds of index, both kept by the scripts that move a job (see
`scripts`): the queue's open jobs, `jobkit:open:<queue>` (a ZSET scored by the creation
time in whole microseconds), and RQ's finished, failed and canceled registries (scored
by the time the job's record expires: finished time + that registry's TTL). A page walks
them from its position and reads only the jobs it examines, so its cost does not depend
on how many jobs the queue holds.
"""

from __future__ import annotations

# KEYS: open, finished, failed, canceled.
# ARGV: job key prefix, after's section ('' none, '0' open, '1' ended), after's time (µs),
# after's id, status ('' any), job name ('' any), since (µs, '' none), until (µs, '' none),
# limit, budget, now (seconds), result ttl, failure ttl, info field, info field, ...
# Returns {rows, frontier}. rows: {{id, section, time µs, info values...}, ...} in the
# listing order (open jobs, section '0', newest created first; then ended ones, section
# '1', most recently finished first; ties by id descending). frontier: {section, time µs,
# id} of the last job examined when the page is full or the budget (jobs read) is spent;
# false when nothing matching is left.
# Every job read counts against the budget, matching or not; an entry whose job is gone,
# is not jobkit's, or is no longer in the state its index says, is read and skipped.
LIST = """
local prefix, limit, budget = ARGV[1], tonumber(ARGV[9]), tonumber(ARGV[10])
local now, want_status, want_name = tonumber(ARGV[11]), ARGV[5], ARGV[6]
local since, till = tonumber(ARGV[7]), tonumber(ARGV[8])
local fields, at = {}, {}
for i = 14, #ARGV do fields[#fields + 1] = ARGV[i]; at[ARGV[i]] = #fields end
local after_section, after_at, after_id = ARGV[2], tonumber(ARGV[3]), ARGV[4]

local function status_of(rq, wait)
  if rq == 'started' then return 'running' end
  if rq == 'scheduled' then
    if wait == 'sleep' then return 'sleeping' end
    return 'scheduled'
  end
  if rq == 'finished' then return 'succeeded' end
  if rq == 'failed' or rq == 'stopped' then return 'failed' end
  if rq == 'canceled' then return 'cancelled' end
  return 'queued'
end
local OPEN = {queued = true, scheduled = true, running = true, sleeping = true}

-- One index, walked newest first in chunks, yielding {id, time µs} strictly after the
-- cursor and within [since, until).
local function stream(key, ttl, section, expect)
  local s = {key = key, ttl = ttl, section = section, expect = expect, buf = {}, pos = 1,
    offset = 0, exhausted = false}
  local top, bottom = till and (till - 1) or nil, since
  if after_section == section and (not top or after_at < top) then top = after_at end
  if ttl == 0 then
    s.max = top and string.format('%.0f', top) or '+inf'
    s.min = bottom and string.format('%.0f', bottom) or '-inf'
  else  -- registry scores are expiry times: shift by the TTL, with a microsecond of slack
    s.max = top and string.format('%.6f', (top + 1) / 1e6 + ttl) or '+inf'
    local floor = now
    if bottom and (bottom - 1) / 1e6 + ttl > floor then floor = (bottom - 1) / 1e6 + ttl end
    s.min = string.format('%.6f', floor)  -- an entry past its expiry has no job left
  end
  return s
end

local function fill(s)
  local reply = redis.call('ZREVRANGEBYSCORE', s.key, s.max, s.min, 'WITHSCORES',
    'LIMIT', s.offset, budget)
  s.buf, s.pos = {}, 1
  for i = 1, #reply, 2 do
    local score = tonumber(reply[i + 1])
    local us = score
    if s.ttl ~= 0 then us = math.floor(score * 1e6 + 0.5) - s.ttl * 1e6 end
    s.buf[#s.buf + 1] = {reply[i], us}
  end
  s.offset = s.offset + #s.buf
  if #s.buf < budget then s.exhausted = true end
end

local function after_cursor(s, e)
  if after_section ~= s.section then return true end
  return e[2] < after_at or (e[2] == after_at and e[1] < after_id)
end

local function peek(s)
  while true do
    if s.pos > #s.buf then
      if s.exhausted then return nil end
      fill(s)
      if #s.buf == 0 then return nil end
    end
    local e = s.buf[s.pos]
    if since and e[2] < since then
      s.exhausted, s.buf = true, {}
      return nil
    end
    if (till and e[2] >= till) or not after_cursor(s, e) then
      s.pos = s.pos + 1
    else
      return e
    end
  end
end

local function wanted(s, values)
  local status = values[at['status']]
  if not status or not values[at['jk_name']] or values[at['jk_moved_to']] then return false end
  local st = status_of(status, values[at['jk_wait']])
  if s.expect then
    if st ~= s.expect then return false end
  elseif not OPEN[st] then
    return false
  end
  if want_status ~= '' and st ~= want_status then return false end
  return want_name == '' or values[at['jk_name']] == want_name
end

local sections = {}
local ended = {succeeded = {KEYS[2], ARGV[12]}, failed = {KEYS[3], ARGV[13]},
  cancelled = {KEYS[4], ARGV[13]}}
if after_section ~= '1' and (want_status == '' or OPEN[want_status]) then
  sections[#sections + 1] = {stream(KEYS[1], 0, '0', nil)}
end
if want_status == '' or ended[want_status] then
  local streams = {}
  for _, st in ipairs({'succeeded', 'failed', 'cancelled'}) do
    if want_status == '' or want_status == st then
      streams[#streams + 1] = stream(ended[st][1], tonumber(ended[st][2]), '1', st)
    end
  end
  sections[#sections + 1] = streams
end

local rows, examined = {}, 0
for _, streams in ipairs(sections) do
  while true do
    local best, head = nil, nil
    for _, s in ipairs(streams) do
      local e = peek(s)
      if e and (not head or e[2] > head[2] or (e[2] == head[2] and e[1] > head[1])) then
        best, head = s, e
      end
    end
    if not best then break end
    best.pos = best.pos + 1
    examined = examined + 1
    local values = redis.call('HMGET', prefix .. head[1], unpack(fields))
    if wanted(best, values) then
      local row = {head[1], best.section, string.format('%.0f', head[2])}
      for i = 1, #fields do row[i + 3] = values[i] end
      rows[#rows + 1] = row
    end
    if #rows >= limit or examined >= budget then
      return {rows, {best.section, string.format('%.0f', head[2]), head[1]}}
    end
  end
end
return {rows, false}
"""

# KEYS: job. ARGV: id, from scratch ('1'|'0'), queue prefix, open prefix, finished prefix,
# failed prefix, canceled prefix, queues set, step field prefixes (3), attempt field
# prefix, info field, ...
# A failed or cancelled job goes back on its queue for a fresh round of attempts under its
# id: out of its registry, its expiry lifted, in the open index again (at its creation
# time), its attempt count at 0 and `jk_retries` one more; its error, result and cancel
# flag are cleared. The attempt that ended it gets its record first (FINISH writes none for
# an attempt that ends a job: until now, the job's fields told it). Its step memo stays
# (the job resumes at the step that failed) unless `from scratch`.
# -1: no such job (or a marker of a job that moved, see FENCE);
# {0, status, wait}: not retryable; else the info fields after the retry.
RETRY = """
local job = redis.call('HMGET', KEYS[1], 'status', 'jk_name', 'jk_moved_to', 'origin',
  'jk_created_at', 'jk_wait')
local status, origin = job[1], job[4]
if not status or not job[2] or job[3] or not origin then return -1 end
if status ~= 'failed' and status ~= 'canceled' and status ~= 'stopped' then
  return {0, status, job[6] or ''}
end
for i = 5, 7 do redis.call('ZREM', ARGV[i] .. origin, ARGV[1]) end
local last = redis.call('HMGET', KEYS[1], 'jk_attempts', 'jk_retries', 'jk_attempt_started',
  'jk_finished_at', 'jk_error', 'jk_started_at')
local number = tonumber(last[1])
if number and number > 0 then
  local field = ARGV[12] .. (last[2] or '0') .. ':' .. number
  if redis.call('HEXISTS', KEYS[1], field) == 0 then
    local outcome, err = 'cancelled', 'null'
    if status ~= 'canceled' then outcome, err = 'failed', last[5] or 'null' end
    local started = last[3] or last[6]
    started = tonumber(started) and started or 'null'
    local finished = tonumber(last[4]) and last[4] or 'null'
    redis.call('HSET', KEYS[1], field, '{"number":' .. number .. ',"outcome":"' .. outcome ..
      '","started":' .. started .. ',"finished":' .. finished .. ',"error":' .. err .. '}')
  end
end
if ARGV[2] == '1' then
  local doomed = {}
  for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
    for i = 9, 11 do
      if string.sub(field, 1, #ARGV[i]) == ARGV[i] then doomed[#doomed + 1] = field end
    end
  end
  for _, field in ipairs(doomed) do redis.call('HDEL', KEYS[1], field) end
end
redis.call('HDEL', KEYS[1], 'jk_error', 'jk_result', 'jk_finished_at', 'ended_at',
  'jk_cancel', 'jk_resume', 'jk_wait', 'jk_scheduled_for', 'jk_unknown_since', 'jk_progress',
  'jk_attempt_started')
redis.call('HSET', KEYS[1], 'status', 'queued', 'jk_attempts', '0')
redis.call('HINCRBY', KEYS[1], 'jk_retries', 1)
redis.call('PERSIST', KEYS[1])
local created = tonumber(job[5]) or 0
redis.call('ZADD', ARGV[4] .. origin, string.format('%.0f', math.floor(created * 1e6 + 0.5)),
  ARGV[1])
redis.call('SADD', ARGV[8], ARGV[3] .. origin)
redis.call('RPUSH', ARGV[3] .. origin, ARGV[1])
return redis.call('HMGET', KEYS[1], unpack(ARGV, 13))
"""

# KEYS: registry, open. ARGV: job key prefix, batch size, status, other status ('' none).
# Deletes up to a batch of the registry's jobs (those whose record still has that status:
# a job re-created under the same id is left alone) and their entries.
# Returns {jobs deleted, entries taken}.
PURGE = """
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
if #ids == 0 then return {0, 0} end
local deleted = 0
for _, id in ipairs(ids) do
  local key = ARGV[1] .. id
  local status = redis.call('HGET', key, 'status')
  if status and (status == ARGV[3] or status == ARGV[4]) then
    deleted = deleted + redis.call('DEL', key)
  end
end
redis.call('ZREM', KEYS[1], unpack(ids))
redis.call('ZREM', KEYS[2], unpack(ids))
return {deleted, #ids}
"""

# KEYS: finished, failed, canceled. ARGV: now, limit per registry.
# Drops registry entries past their expiry (their job records expired with them): what
# RQ's own workers do in their maintenance, bounded so a backlog never blocks Redis long.
TRIM = """
local trimmed = 0
for _, key in ipairs(KEYS) do
  local n = redis.call('ZCOUNT', key, '-inf', ARGV[1])
  if n > 0 then
    if n > tonumber(ARGV[2]) then n = tonumber(ARGV[2]) end
    trimmed = trimmed + redis.call('ZREMRANGEBYRANK', key, 0, n - 1)
  end
end
return trimmed
"""
