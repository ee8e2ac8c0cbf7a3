"""What a worker does beside running jobs, so that no separate scheduler or reaper is
needed and a dead worker's jobs are never lost.

- Presence: the worker registers in RQ's worker registry (so `rq info` and the
  dispatcher's live-worker check see it) and keeps its entry fresh on every heartbeat.
- Leases: each heartbeat renews the lease of every job running here, and reads their
  cancel flags, for a cancellation the listener missed.
- Promotion: due scheduled jobs (delays, retry backoff, durable sleeps) move to the queue.
- Recovery: jobs whose lease ran out (their worker died) are retried or failed, and ids a
  worker popped but never started are handed back.
- Trimming: entries of the finished, failed and canceled registries whose job record has
  expired are dropped, so those registries (which listing walks) hold only live jobs.

Both loops survive any error: an outage is ridden out, anything else logged once and
backed off (`guard`), so a poison value cannot stop promotion while the worker still
heart-beats and counts as live.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import time
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from jobkit.health import check_queue_redis_async
from jobkit.settings import redact_url
from jobkit_dispatch.engines.rq import keys
from jobkit_dispatch.engines.rq.codec import encode_error, micro_time, rq_now
from jobkit_dispatch.engines.rq.guard import LoopGuard
from jobkit_engine import JobError

if TYPE_CHECKING:
    from jobkit_dispatch.engines.rq.cancel import Cancellations
    from jobkit_dispatch.engines.rq.link import WorkerLink

log = logging.getLogger("jobkit.worker")

TRIM_BATCH = 1000  # expired registry entries dropped per registry and pass (see `TRIM`)

_ABANDONED = JobError("AbandonedJobError", "the worker running this job stopped responding")


class Housekeeper:
    """Presence, leases, promotion and recovery for one worker."""

    def __init__(
        self,
        link: WorkerLink,
        cancels: Cancellations,
        running: dict[str, asyncio.Task[None]],
        *,
        worker_key: str,
        heartbeat: float,
        lease: float,
    ) -> None:
        self._link = link
        self._cancels = cancels
        self._running = running  # job id -> its task: shared with the worker
        self._worker_key = worker_key
        self._heartbeat = heartbeat
        self._lease = lease
        # A heartbeat comes every `heartbeat` anyway: a failed one must not wait longer.
        self.heartbeat_guard = LoopGuard("heartbeat", link.name, first_delay=0, max_delay=0)
        self.promotion_guard = LoopGuard("promotion and recovery", link.name)

    # -- presence -------------------------------------------------------------------------

    async def register(self) -> None:
        """Enter RQ's worker registry, with the heartbeat the dispatcher reads."""
        link = self._link
        async with link.redis.pipeline(transaction=True) as pipe:
            pipe.sadd(keys.workers_set_key, self._worker_key)
            pipe.sadd(link.keys.workers, self._worker_key)
            pipe.hset(
                self._worker_key,
                mapping={
                    "birth": rq_now(),
                    "last_heartbeat": rq_now(),
                    "queues": link.keys.name,
                    "pid": os.getpid(),
                    "hostname": socket.gethostname(),
                    "state": "idle",
                    "version": "jobkit",
                    "python_version": sys.version,
                    "jk_heartbeat": time.time(),  # read by the dispatcher's live-worker check
                },
            )
            pipe.expire(self._worker_key, int(self._lease) + 60)
            await pipe.execute()

    async def unregister(self) -> None:
        link = self._link
        async with link.redis.pipeline(transaction=True) as pipe:
            pipe.srem(keys.workers_set_key, self._worker_key)
            pipe.srem(link.keys.workers, self._worker_key)
            pipe.hset(self._worker_key, "death", rq_now())
            pipe.expire(self._worker_key, 60)
            await pipe.execute()

    async def warn_about_redis_config(self) -> None:
        """Say at startup, once, if the queue Redis can lose jobs (evicting, not persisting):
        nothing else would tell until jobs vanish. One round trip; never fails the worker."""
        link = self._link
        for warning in await check_queue_redis_async(link.redis):
            log.warning(
                "worker %s: queue Redis %s: %s",
                link.name,
                redact_url(link.settings.redis_url),
                warning,
            )

    # -- heartbeats -----------------------------------------------------------------------

    async def heartbeats(self) -> None:
        """Keep this worker visible and the leases of its running jobs fresh; pick up
        cancellations the listener missed, and repeat those a handler did not honour."""
        while True:
            await asyncio.sleep(self._heartbeat)
            try:
                self._repeat_abort()
                await self.renew()
            except (RedisError, OSError) as exc:
                self._link.failed(exc)
            except Exception as exc:
                await self.heartbeat_guard.failed(exc)
            else:
                self._link.ok()

    def _repeat_abort(self) -> None:
        """While the worker aborts, interrupt again every handler still running: one
        interruption can be lost (Python 3.11's `asyncio.wait_for`, which redis-py wraps
        every command in, swallows a cancellation that arrives as its command completes),
        and an abort must not wait for the job to end by itself."""
        if not self._link.aborting:
            return
        for job_id in list(self._cancels.in_handler):
            task = self._running.get(job_id)
            if task is not None and not task.done():
                log.warning("job %s: still running after the abort; interrupting again", job_id)
                task.cancel()

    async def renew(self) -> None:
        """One pipeline: the worker's entry, every running job's lease and cancel flag.

        Redis can lose its data and stay up (a restart without persistence, a failover to
        an empty replica, `FLUSHALL`); no error says so. The pipeline re-adds the worker to
        the registry sets (idempotent) and reads whether that, or the hash, was missing: a
        worker that is gone from the registry gets no jobs, so it registers again."""
        link = self._link
        running = list(self._running)
        async with link.redis.pipeline(transaction=False) as pipe:
            pipe.sadd(keys.workers_set_key, self._worker_key)
            pipe.sadd(link.keys.workers, self._worker_key)
            pipe.exists(self._worker_key)
            pipe.hset(
                self._worker_key,
                mapping={
                    "last_heartbeat": rq_now(),
                    "jk_heartbeat": time.time(),
                    "state": "busy" if running else "idle",
                },
            )
            pipe.expire(self._worker_key, int(self._lease) + 60)
            expiry = time.time() + self._lease
            for job_id in running:
                pipe.zadd(link.keys.running, {job_id: expiry}, xx=True)
            for job_id in running:
                pipe.hget(keys.job_key(job_id), "jk_cancel")
            replies = await pipe.execute()
        if replies[0] or replies[1] or not replies[2]:
            await self.register()
            log.warning(
                "worker %s: Redis lost this worker's registration (data loss?); registered again",
                link.name,
            )
        cancel_flags = replies[len(replies) - len(running) :]  # the HGETs come last
        for job_id, flag in zip(running, cancel_flags, strict=True):
            if flag:
                self._cancels.cancel_local(job_id)

    # -- promotion and recovery -----------------------------------------------------------

    async def promote_and_recover(self) -> None:
        """Promote due scheduled jobs; every heartbeat also recover abandoned ones."""
        next_recovery, seen_claimed = 0.0, set[bytes]()
        while True:
            try:
                wait = await self._promote_due()
                if time.monotonic() >= next_recovery:
                    next_recovery = time.monotonic() + self._heartbeat
                    seen_claimed = await self._recover_abandoned(seen_claimed)
            except (RedisError, OSError) as exc:
                self._link.failed(exc)
                wait = 1.0
            except Exception as exc:
                await self.promotion_guard.failed(exc)
                continue
            self.promotion_guard.ok()
            await asyncio.sleep(wait)

    async def _promote_due(self) -> float:
        """Move due jobs to the queue; return how long until the next one is due (≤ 1 s)."""
        q = self._link.keys
        now = time.time()
        _, next_due = await self._link.promote(
            keys=[q.scheduled, q.queue], args=[now, 500, keys.job_key_prefix]
        )
        if next_due is None:
            return 1.0
        return min(1.0, max(0.01, float(next_due) - now))

    async def _recover_abandoned(self, seen_claimed: set[bytes]) -> set[bytes]:
        """Retry jobs whose lease expired, and hand back ids popped by a worker that died
        before starting them (seen on two passes in a row). Ids stay raw bytes here: one
        that is not UTF-8 goes back to the queue too, and is quarantined there."""
        link, q = self._link, self._link.keys
        # Renew our own leases first: after a Redis outage they may look expired, and a
        # job this worker still runs must not be handed to another.
        await self.renew()
        now = micro_time()
        recovered = await link.recover(
            keys=[q.running, q.queue, q.failed, q.canceled, q.open],
            args=[
                now,
                keys.job_key_prefix,
                encode_error(_ABANDONED),
                link.settings.failure_ttl,
                keys.attempt_field_prefix,
            ],
        )
        await link.trim(keys=[q.finished, q.failed, q.canceled], args=[now, TRIM_BATCH])
        for job_id in recovered:
            log.warning(
                "job %s: its worker stopped responding; retried or failed",
                job_id.decode(errors="backslashreplace"),
            )
        claimed = set(await link.redis.lrange(q.claimed, 0, -1))
        stale = (claimed & seen_claimed) - {job_id.encode() for job_id in self._running}
        if stale:
            await link.hand_back(sorted(stale))
        return claimed - stale
