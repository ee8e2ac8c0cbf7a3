"""The Lua scripts that make each state change of a job atomic.

Every transition that two processes could race on (enqueue vs. an id that exists, start
vs. cancel, finish vs. lease recovery, promotion by several workers) is one script, so a
job is never lost and never run twice.
"""

from __future__ import annotations

# KEYS: job, queue, queues set, scheduled, open. ARGV: id, 'now'|'at', due, created (whole
# microseconds), field, value, ...
# 1: enqueued. When the id is taken: {the engine the job moved to (a FENCE marker) or
# false, the reason stored with it}.
ENQUEUE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('HMGET', KEYS[1], 'jk_moved_to', 'jk_reason')
end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('SADD', KEYS[3], KEYS[2])
redis.call('ZADD', KEYS[5], ARGV[4], ARGV[1])
if ARGV[2] == 'at' then
  redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
else
  redis.call('RPUSH', KEYS[2], ARGV[1])
end
return 1
"""

# KEYS: job, claimed, running. ARGV: id, now, lease expiry, worker name, rq timestamp.
# Returns the job hash, or false when the job is no longer ours to run.
# `jk_started_at` is when this execution began; an attempt resumed (after a sleep or a
# hand-back) keeps when it first began in `jk_attempt_started`, a field only such attempts
# carry: a job's hash stays small enough for Redis' compact encoding.
START = """
if redis.call('LREM', KEYS[2], 1, ARGV[1]) == 0 then return false end
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return false end
if redis.call('HGET', KEYS[1], 'jk_resume') == '1' then
  redis.call('HDEL', KEYS[1], 'jk_resume')
  local first = redis.call('HGET', KEYS[1], 'jk_started_at')
  if first then redis.call('HSETNX', KEYS[1], 'jk_attempt_started', first) end
else
  redis.call('HINCRBY', KEYS[1], 'jk_attempts', 1)
  redis.call('HDEL', KEYS[1], 'jk_attempt_started')
end
redis.call('HSET', KEYS[1], 'status', 'started', 'started_at', ARGV[5],
  'worker_name', ARGV[4], 'jk_started_at', ARGV[2])
redis.call('HDEL', KEYS[1], 'jk_scheduled_for', 'jk_wait')
redis.call('PERSIST', KEYS[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: job, running, scheduled, queue, finished, failed, canceled, open.
# ARGV: id, outcome, now, due-or-expiry, ttl, cancelled ttl, rq end timestamp, attempt
# field, its record ('' for none), field, value, ...
# A cancel accepted while the job ran (`jk_cancel`) wins over whatever the attempt ended
# with: the job ends canceled, and the outcome's fields (result, error, record) are not
# written. The record of an attempt that is retried is written in the same step; one that
# ends the job needs none: the job's own fields say how it ended (see `detail`).
# Returns 0 when the lease was lost (the job was recovered elsewhere): nothing is written;
# 2 when the cancel won over another outcome; 1 otherwise.
FINISH = """
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then return 0 end
local outcome, ttl, reply = ARGV[2], ARGV[5], 1
if redis.call('HGET', KEYS[1], 'jk_cancel') then
  if outcome ~= 'cancelled' then outcome, reply = 'cancelled', 2 end
  ttl = ARGV[6]
else
  if ARGV[9] ~= '' then redis.call('HSET', KEYS[1], ARGV[8], ARGV[9]) end
  if #ARGV > 9 then redis.call('HSET', KEYS[1], unpack(ARGV, 10)) end
end
if outcome == 'retry' or outcome == 'sleep' then
  redis.call('HSET', KEYS[1], 'status', 'scheduled', 'jk_wait', outcome,
    'jk_scheduled_for', ARGV[4])
  if outcome == 'sleep' then redis.call('HSET', KEYS[1], 'jk_resume', '1') end
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
  return reply
end
if outcome == 'requeue' then
  redis.call('HSET', KEYS[1], 'status', 'queued')
  redis.call('HINCRBY', KEYS[1], 'jk_attempts', -1)
  redis.call('LPUSH', KEYS[4], ARGV[1])
  return reply
end
if outcome == 'succeeded' then redis.call('HDEL', KEYS[1], 'jk_error') end
local status, registry = 'finished', KEYS[5]
if outcome == 'failed' then status, registry = 'failed', KEYS[6] end
if outcome == 'cancelled' then status, registry = 'canceled', KEYS[7] end
redis.call('HSET', KEYS[1], 'status', status, 'jk_finished_at', ARGV[3], 'ended_at', ARGV[7])
redis.call('HDEL', KEYS[1], 'jk_scheduled_for', 'jk_wait', 'jk_resume')
redis.call('ZADD', registry, ARGV[3] + ttl, ARGV[1])
redis.call('ZREM', KEYS[8], ARGV[1])
redis.call('EXPIRE', KEYS[1], ttl)
return reply
"""

# KEYS: job. ARGV: the step's admission field (`jk_began:<step id>`).
# Called right before a step function runs. 0: a cancel was accepted, the step must not
# start; 1: it may, and its admission time (Redis' clock, as `jk_cancel`) is recorded.
# The vanished hash of a deleted job is never recreated.
BEGIN_STEP = """
if redis.call('HGET', KEYS[1], 'jk_cancel') then return 0 end
if redis.call('EXISTS', KEYS[1]) == 1 then
  local now = redis.call('TIME')
  redis.call('HSET', KEYS[1], ARGV[1], now[1] .. '.' .. string.format('%06d', now[2]))
end
return 1
"""

# KEYS: scheduled, queue. ARGV: now, limit, job key prefix.
# Returns {jobs promoted, due time of the next scheduled job or false}.
# An id with no job record (or none with a status) goes to the queue all the same: the
# worker that pops it quarantines or fails it (see `poison`), instead of it vanishing.
PROMOTE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local key = ARGV[3] .. id
  local status = redis.call('HGET', key, 'status')
  if status == 'scheduled' then
    redis.call('HSET', key, 'status', 'queued')
    redis.call('RPUSH', KEYS[2], id)
  elseif not status then
    redis.call('RPUSH', KEYS[2], id)
  end
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {#ids, nxt[2] or false}
"""

# KEYS: running, queue, failed, canceled, open.
# ARGV: now, job key prefix, error json, ttl, attempt field prefix.
# Jobs whose lease expired (their worker died) are retried, or failed when out of attempts;
# as in FINISH, a cancel accepted while the job ran wins (canceled, no error written); a
# lost attempt that is retried gets its record (`keys.attempt_field_prefix`).
# A count that is no number reads as 0, and an id with no record (or none with a status)
# goes to the queue: either way the worker that pops it fails or quarantines it (`poison`).
RECOVER = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 100)
local recovered = {}
local function record(key, number, outcome, err)
  local job = redis.call('HMGET', key, 'jk_retries', 'jk_attempt_started', 'jk_started_at')
  local started = job[2] or job[3]
  started = tonumber(started) and started or 'null'
  redis.call('HSET', key, ARGV[5] .. (job[1] or '0') .. ':' .. number,
    '{"number":' .. number .. ',"outcome":"' .. outcome .. '","started":' .. started ..
    ',"finished":' .. ARGV[1] .. ',"error":' .. err .. '}')
end
for _, id in ipairs(ids) do
  local key = ARGV[2] .. id
  local removed = redis.call('ZREM', KEYS[1], id) == 1
  local status = redis.call('HGET', key, 'status')
  if removed and not status then
    redis.call('RPUSH', KEYS[2], id)
  elseif removed and status == 'started' then
    local attempts = tonumber(redis.call('HGET', key, 'jk_attempts') or '1') or 0
    local limit = tonumber(redis.call('HGET', key, 'jk_max_attempts') or '1') or 1
    if redis.call('HGET', key, 'jk_cancel') then
      redis.call('HSET', key, 'status', 'canceled', 'jk_finished_at', ARGV[1])
      redis.call('ZADD', KEYS[4], ARGV[1] + ARGV[4], id)
      redis.call('ZREM', KEYS[5], id)
      redis.call('EXPIRE', key, ARGV[4])
    elseif attempts < limit then
      record(key, attempts, 'retrying', ARGV[3])
      redis.call('HSET', key, 'status', 'queued', 'jk_error', ARGV[3])
      redis.call('RPUSH', KEYS[2], id)
    else
      redis.call('HSET', key, 'status', 'failed', 'jk_finished_at', ARGV[1], 'jk_error', ARGV[3])
      redis.call('ZADD', KEYS[3], ARGV[1] + ARGV[4], id)
      redis.call('ZREM', KEYS[5], id)
      redis.call('EXPIRE', key, ARGV[4])
    end
    table.insert(recovered, id)
  end
end
return recovered
"""

# KEYS: claimed, queue. ARGV: job key prefix, id, id, ...
# Puts back ids a worker popped but never started (it died in between); an id with no
# record (or none with a status) too, for the worker that pops it to quarantine (`poison`).
RECLAIM = """
local n = 0
for i = 2, #ARGV do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) == 1 then
    local status = redis.call('HGET', ARGV[1] .. ARGV[i], 'status')
    if status == 'queued' or not status then
      redis.call('LPUSH', KEYS[2], ARGV[i])
      n = n + 1
    end
  end
end
return n
"""

# KEYS: job. ARGV: id, now, ttl, channel, queue key prefix, scheduled prefix, canceled prefix,
# open prefix.
# 1: cancelled now; 2: running, cancellation sent to its worker; 0: already finished; -1: unknown.
# For a running job, `jk_cancel` keeps when the first cancel was accepted (Redis' clock):
# from then on no step starts (BEGIN_STEP) and the job ends canceled (FINISH, RECOVER).
CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
if status == 'finished' or status == 'failed' or status == 'canceled' or status == 'stopped' then
  return 0
end
if status == 'started' then
  local now = redis.call('TIME')
  redis.call('HSETNX', KEYS[1], 'jk_cancel', now[1] .. '.' .. string.format('%06d', now[2]))
  redis.call('PUBLISH', ARGV[4], ARGV[1])
  return 2
end
local queue = redis.call('HGET', KEYS[1], 'origin')
redis.call('LREM', ARGV[5] .. queue, 0, ARGV[1])
redis.call('ZREM', ARGV[6] .. queue, ARGV[1])
redis.call('ZREM', ARGV[8] .. queue, ARGV[1])
redis.call('HSET', KEYS[1], 'status', 'canceled', 'jk_finished_at', ARGV[2])
redis.call('HDEL', KEYS[1], 'jk_scheduled_for', 'jk_wait', 'jk_resume')
redis.call('ZADD', ARGV[7] .. queue, ARGV[2] + ARGV[3], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""

# KEYS: queue's workers set. ARGV: oldest heartbeat (unix time) that counts as alive.
LIVE_WORKERS = """
local alive = 0
for _, key in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local beat = redis.call('HGET', key, 'jk_heartbeat')
  if beat and tonumber(beat) >= tonumber(ARGV[1]) then alive = alive + 1 end
end
return alive
"""

# KEYS: job, queue, open. ARGV: id.
# 1: withdrawn (it will never run here); 0: a worker has it, or it is no longer queued;
# -1: a worker popped it and is starting it: it stays.
WITHDRAW = """
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return 0 end
if redis.call('LREM', KEYS[2], 0, ARGV[1]) == 0 then return -1 end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[1])
return 1
"""

# KEYS: job. ARGV: id, engine, its reason, marker ttl, queue key prefix, scheduled prefix,
# 'hand-over' | 'look', open prefix.
# Hands a job over to another engine (`engine`, which holds a copy under the same id),
# unless an RQ worker has had it. {'moved', engine, reason}: RQ will never run the job — a
# copy that no worker started is taken off its queue, and the hash becomes a marker (status
# 'canceled', `jk_moved_to`) that START refuses like any job that is not queued, that
# ENQUEUE answers with instead of enqueueing, and that `get` reports as no job. The same
# when no copy exists: the marker refuses an enqueue still on its way. {'rq', reason}: a
# worker started the job (it may be running, retrying, finished or cancelled): RQ keeps
# it. Running it twice changes nothing. With 'look' nothing is written: the same answers
# where the job is settled already, and {} where a hand-over would settle it.
FENCE = """
local job = redis.call('HMGET', KEYS[1], 'status', 'jk_moved_to', 'jk_started_at', 'jk_wait',
  'origin', 'jk_reason')
local status, moved, started, wait, origin = job[1], job[2], job[3], job[4], job[5]
if moved then return {'moved', moved, job[6] or ''} end
local waiting = status == 'queued' or (status == 'scheduled' and wait == 'delay')
if status and (started or not waiting) then return {'rq', job[6] or ''} end
if ARGV[7] == 'look' then return {} end
if origin then
  redis.call('LREM', ARGV[5] .. origin, 0, ARGV[1])
  redis.call('ZREM', ARGV[6] .. origin, ARGV[1])
  redis.call('ZREM', ARGV[8] .. origin, ARGV[1])
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'status', 'canceled', 'jk_moved_to', ARGV[2], 'jk_reason', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {'moved', ARGV[2], ARGV[3]}
"""
