"""Messages on a queue that name no job a worker can run, and where they end.

Redis holds whatever anyone wrote there: an id that is not UTF-8, an id whose job hash is
gone, a hash with no status or an attempts count that is no number. None of them may kill
a worker, stall its queue or vanish unseen; each ends in one of two inspectable places:

- **quarantine** — an id that is not valid UTF-8, or that names no job hash, has no job
  to fail: it leaves the queue for `jobkit:quarantine:<queue>`, a list of JSON records
  (`id`, or `id_hex` when the id is not plain ASCII; `queue`; `reason`; `at`), newest
  first, capped at `QUARANTINE_LIMIT`; `jobkit stats` counts it;
- **failed** — a job hash that cannot be started fails with a `CorruptJobError` naming
  the field, in the queue's failed registry like any failed job; an unreadable value is
  kept aside in `jk_corrupt:<field>` so that `get_job` can read the record.

Poison found anywhere else (the scheduled set, the running set, a dead worker's claimed
list) is put back on the queue by the script that finds it, so the fetch path is the one
place that decides, with the one script here.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from jobkit_dispatch.engines.rq import keys
from jobkit_dispatch.engines.rq.codec import micro_time, rq_now

if TYPE_CHECKING:
    from jobkit_dispatch.engines.rq.link import WorkerLink

log = logging.getLogger("jobkit.worker")

QUARANTINE_LIMIT = 10_000  # records kept per queue: a flood of garbage cannot fill Redis

# KEYS: job, queue, claimed, scheduled, running, failed, quarantine, open.
# ARGV: id, 'undecodable'|'check', now, failure ttl, queue name, quarantine limit, rq now.
# 'undecodable' quarantines the id; 'check' (for an id the start script refused or failed
# on) quarantines it when no hash exists, fails the job when its hash has no status or a
# count that is no integer, and otherwise does nothing (the job was cancelled, or is
# another worker's now): false. The id leaves every list and set of the queue.
SETTLE = """
local id, now, ttl = ARGV[1], tonumber(ARGV[3]), tonumber(ARGV[4])
local function withdraw()
  redis.call('LREM', KEYS[2], 0, id)
  redis.call('LREM', KEYS[3], 0, id)
  redis.call('ZREM', KEYS[4], id)
  redis.call('ZREM', KEYS[5], id)
  redis.call('ZREM', KEYS[8], id)
end
local function hex(c) return string.format('%02x', string.byte(c)) end
local function quarantine(reason)
  withdraw()
  local record = {queue = ARGV[5], reason = reason, at = now}
  if string.find(id, '[^%w%-_:.@/+=]') then
    record.id_hex = (string.gsub(id, '.', hex))
  else
    record.id = id
  end
  redis.call('LPUSH', KEYS[7], cjson.encode(record))
  redis.call('LTRIM', KEYS[7], 0, tonumber(ARGV[6]) - 1)
  return 'quarantined'
end
local function fail(field, problem, replacement)
  withdraw()
  local value = redis.call('HGET', KEYS[1], field)
  if value then redis.call('HSET', KEYS[1], 'jk_corrupt:' .. field, value) end
  if replacement then redis.call('HSET', KEYS[1], field, replacement) end
  local message = 'job ' .. id .. ': ' .. problem .. ', so it cannot run'
  redis.call('HSET', KEYS[1], 'status', 'failed', 'jk_finished_at', now, 'ended_at', ARGV[7],
    'jk_error', cjson.encode({type = 'CorruptJobError', message = message}))
  redis.call('HDEL', KEYS[1], 'jk_scheduled_for', 'jk_wait', 'jk_resume')
  redis.call('ZADD', KEYS[6], now + ttl, id)
  redis.call('EXPIRE', KEYS[1], ttl)
  return 'failed'
end
if ARGV[2] == 'undecodable' then return quarantine('the id is not valid UTF-8') end
if redis.call('EXISTS', KEYS[1]) == 0 then return quarantine('no job record: ' .. KEYS[1]) end
if not redis.call('HGET', KEYS[1], 'status') then
  return fail('status', 'its record has no status')
end
for field, replacement in pairs({jk_attempts = '0', jk_max_attempts = '1'}) do
  local value = redis.call('HGET', KEYS[1], field)
  if value and not string.match(value, '^%-?%d+$') then
    return fail(field, 'field ' .. field .. ' of its record is no integer', replacement)
  end
end
return false
"""


class Poison:
    """Settles the ids one worker's queue yields that name no job it can start."""

    def __init__(self, link: WorkerLink) -> None:
        self._link = link
        self._settle = link.redis.register_script(SETTLE)

    async def undecodable(self, raw_id: bytes) -> None:
        """A popped id that is not valid UTF-8: quarantine it."""
        verdict = await self._run(raw_id, "undecodable")
        log.error(
            "queue %s: job id %r is not valid UTF-8; %s in %s",
            self._link.keys.name,
            raw_id,
            verdict,
            self._link.keys.quarantine,
        )

    async def check(self, job_id: str) -> None:
        """An id the start script refused or failed on: quarantine or fail it if its record
        is what stopped it; otherwise leave it (it was cancelled, or another worker has it)."""
        verdict = await self._run(job_id.encode(), "check")
        if verdict == "quarantined":
            log.error(
                "queue %s: job %s has no record (rq:job:%s); quarantined in %s",
                self._link.keys.name,
                job_id,
                job_id,
                self._link.keys.quarantine,
            )
        elif verdict == "failed":
            log.error("job %s: its record is corrupt; failed (CorruptJobError)", job_id)

    async def _run(self, raw_id: bytes, mode: str) -> str | None:
        link, q = self._link, self._link.keys
        reply = await link.retrying(
            lambda: self._settle(
                keys=[
                    keys.job_key_prefix.encode() + raw_id,
                    q.queue,
                    q.claimed,
                    q.scheduled,
                    q.running,
                    q.failed,
                    q.quarantine,
                    q.open,
                ],
                args=[
                    raw_id,
                    mode,
                    micro_time(),
                    link.settings.failure_ttl,
                    q.name,
                    QUARANTINE_LIMIT,
                    rq_now(),
                ],
            )
        )
        return reply.decode() if isinstance(reply, bytes) else None
