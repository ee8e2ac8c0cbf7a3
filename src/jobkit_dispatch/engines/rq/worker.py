"""The jobkit RQ worker: one asyncio process serving one queue, N jobs at a time.

Per job it makes three Redis round trips — pop (BLMOVE), start (script), finish (script)
— plus one write per completed step. Housekeeping runs beside the jobs: a heartbeat that
renews the lease of every running job, promotion of due scheduled jobs, recovery of jobs
whose worker died, and a listener for cancellations.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from rq.utils import utcformat

from jobkit.health import check_queue_redis_async
from jobkit.queues import QueueRegistry, default_queues
from jobkit.settings import JobkitSettings, get_settings, redact_url
from jobkit_dispatch.engines.rq import keys
from jobkit_dispatch.engines.rq.codec import (
    ClaimedJob,
    CorruptJobError,
    decode_claimed,
    encode_error,
)
from jobkit_dispatch.engines.rq.scripts import (
    BEGIN_STEP,
    FINISH,
    PROMOTE,
    RECLAIM,
    RECOVER,
    START,
)
from jobkit_dispatch.engines.rq.state import ProgressWriter, RedisStepMemo
from jobkit_engine import (
    JobContext,
    JobError,
    JobRegistry,
    MemoSteps,
    SystemClock,
    default_registry,
)
from jobkit_engine._execution import Failed, Outcome, Succeeded, Suspended, execute_job

log = logging.getLogger("jobkit.worker")

_POP_TIMEOUT = 1.0  # seconds a pop blocks: bounds how long a stop request waits
_ABANDONED = JobError("AbandonedJobError", "the worker running this job stopped responding")
Cancelled = "cancelled"
Requeue = "requeue"


def _rq_now() -> str:
    return utcformat(datetime.now(UTC).replace(tzinfo=None))


class RQWorker:
    """Serves one queue. `await run()` until `stop()` (graceful) or `abort()`."""

    def __init__(
        self,
        queue: str,
        *,
        settings: JobkitSettings | None = None,
        concurrency: int | None = None,
        registry: JobRegistry = default_registry,
        queues: QueueRegistry = default_queues,
        burst: bool = False,
    ) -> None:
        self.settings = settings or get_settings()
        self.burst = burst  # stop once the queue is empty and nothing runs
        spec = queues.get(queue)
        self.concurrency = concurrency or spec.concurrency
        self.keys = keys.QueueKeys(queue)
        self.name = f"jobkit.{socket.gethostname()}.{os.getpid()}.{queue}.{uuid.uuid4().hex[:6]}"
        self.worker_key = keys.worker_key_prefix + self.name
        self._registry = registry
        self._queues = queues
        self._heartbeat = self.settings.worker_heartbeat
        self._lease = 3 * self._heartbeat
        self._clock = SystemClock()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._in_handler: set[str] = set()  # jobs whose handler runs: only those are interrupted
        # Running jobs asked to cancel -> when their handler was last interrupted (monotonic),
        # None while it has not started. See `_cancel_local`.
        self._cancelled: dict[str, float | None] = {}
        self._stopping = asyncio.Event()
        self._aborting = False
        self._outage_since: float | None = None  # monotonic time Redis stopped answering
        self.redis: aioredis.Redis | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def stop(self) -> None:
        """Finish the running jobs, take no new ones."""
        log.info("worker %s: stopping after %d running job(s)", self.name, len(self._running))
        self._stopping.set()

    def abort(self) -> None:
        """Interrupt the running jobs; they go back to the queue to run again."""
        log.warning("worker %s: aborting %d running job(s)", self.name, len(self._running))
        self._aborting = True
        self._stopping.set()
        for job_id in self._in_handler:
            self._running[job_id].cancel()

    async def run(self) -> None:
        self.redis = aioredis.Redis.from_url(
            self.settings.redis_url.get_secret_value(),
            socket_timeout=_POP_TIMEOUT + 5 * self.settings.redis_socket_timeout + 1,
            socket_connect_timeout=self.settings.redis_connect_timeout,
        )
        self._start = self.redis.register_script(START)
        self._finish_script = self.redis.register_script(FINISH)
        self._begin_step = self.redis.register_script(BEGIN_STEP)
        self._promote = self.redis.register_script(PROMOTE)
        self._recover = self.redis.register_script(RECOVER)
        self._reclaim = self.redis.register_script(RECLAIM)
        await self._retrying(self._register)
        log.info(
            "worker %s serving queue %r, concurrency %d",
            self.name,
            self.keys.name,
            self.concurrency,
        )
        await self._warn_about_redis_config()
        helpers = [
            asyncio.create_task(loop())
            for loop in (self._heartbeats, self._housekeeping, self._listen_for_cancels)
        ]
        try:
            await self._fetch_loop()
            if self._running:
                await asyncio.gather(*self._running.values(), return_exceptions=True)
        finally:
            for task in helpers:
                task.cancel()
            # Bounded: a helper cancelled mid-handshake (e.g. a pubsub subscribe) must not
            # keep the worker from exiting.
            await asyncio.wait(helpers, timeout=2)
            await self._retrying(self._unregister, attempts=3)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.redis.aclose(), 2)
            log.info("worker %s stopped", self.name)

    async def _warn_about_redis_config(self) -> None:
        """Say at startup, once, if the queue Redis can lose jobs (evicting, not persisting):
        nothing else would tell until jobs vanish. One round trip; never fails the worker."""
        assert self.redis is not None
        for warning in await check_queue_redis_async(self.redis):
            log.warning(
                "worker %s: queue Redis %s: %s",
                self.name,
                redact_url(self.settings.redis_url),
                warning,
            )

    async def _retrying(self, action: Any, attempts: int | None = None) -> Any:
        """Run `action` until Redis answers, backing off up to 5 s; a worker rides out an
        outage instead of dying with jobs in hand."""
        delay, tried = 0.1, 0
        while True:
            try:
                result = await action()
            except (RedisError, OSError) as exc:
                tried += 1
                if self._aborting or (attempts is not None and tried >= attempts):
                    log.error("worker %s: giving up on Redis: %s", self.name, exc)
                    return None
                self._redis_failed(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            else:
                self._redis_ok()
                return result

    def _redis_failed(self, exc: Exception) -> None:
        """Log an outage once, not once per loop and second."""
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning(
                "worker %s: Redis unavailable (%s: %s); riding it out, jobs in hand are kept",
                self.name,
                type(exc).__name__,
                exc,
            )
        else:
            log.debug("worker %s: Redis still unavailable (%s)", self.name, type(exc).__name__)

    def _redis_ok(self) -> None:
        if self._outage_since is not None:
            log.warning(
                "worker %s: Redis is back after %.1fs",
                self.name,
                time.monotonic() - self._outage_since,
            )
            self._outage_since = None

    async def _register(self) -> None:
        assert self.redis is not None
        ttl = int(self._lease) + 60
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.sadd(keys.workers_set_key, self.worker_key)
            pipe.sadd(self.keys.workers, self.worker_key)
            pipe.hset(
                self.worker_key,
                mapping={
                    "birth": _rq_now(),
                    "last_heartbeat": _rq_now(),
                    "queues": self.keys.name,
                    "pid": os.getpid(),
                    "hostname": socket.gethostname(),
                    "state": "idle",
                    "version": "jobkit",
                    "python_version": sys.version,
                    "jk_heartbeat": time.time(),  # read by the dispatcher's live-worker check
                },
            )
            pipe.expire(self.worker_key, ttl)
            await pipe.execute()

    async def _unregister(self) -> None:
        assert self.redis is not None
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.srem(keys.workers_set_key, self.worker_key)
            pipe.srem(self.keys.workers, self.worker_key)
            pipe.hset(self.worker_key, "death", _rq_now())
            pipe.expire(self.worker_key, 60)
            await pipe.execute()

    # -- taking jobs ----------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        slots = asyncio.Semaphore(self.concurrency)
        while not self._stopping.is_set():
            await slots.acquire()
            if self._stopping.is_set():
                break
            job_id = await self._pop()
            if job_id is None:
                slots.release()
                if self.burst:
                    if not self._running:
                        break
                    await asyncio.wait(
                        list(self._running.values()), return_when=asyncio.FIRST_COMPLETED
                    )
                continue
            if self._stopping.is_set():  # popped while stopping: hand it back untouched
                await self._retrying(lambda j=job_id: self._hand_back([j]), attempts=5)
                slots.release()
                break
            task = asyncio.create_task(self._run_job(job_id))
            self._running[job_id] = task
            task.add_done_callback(
                lambda _t, j=job_id: (self._running.pop(j, None), slots.release())
            )

    async def _pop(self) -> str | None:
        """The next job id, or None. A stop request interrupts the wait at once: an id
        the server moved meanwhile sits in the claimed list, and is handed back."""
        if self.burst:
            return await self._pop_now()
        pop = asyncio.create_task(self._pop_now())
        stop = asyncio.create_task(self._stopping.wait())
        await asyncio.wait({pop, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if pop.done():
            return pop.result()
        pop.cancel()
        await asyncio.gather(pop, return_exceptions=True)
        await self._retrying(self._hand_back_orphans, attempts=3)
        return None

    async def _hand_back_orphans(self) -> None:
        assert self.redis is not None
        claimed = {j.decode() for j in await self.redis.lrange(self.keys.claimed, 0, -1)}
        orphans = sorted(claimed - set(self._running))
        if orphans:
            await self._hand_back(orphans)

    async def _pop_now(self) -> str | None:
        assert self.redis is not None
        try:
            if self.burst:
                job_id = await self.redis.lmove(self.keys.queue, self.keys.claimed)
            else:
                job_id = await self.redis.blmove(
                    self.keys.queue, self.keys.claimed, _POP_TIMEOUT, "LEFT", "RIGHT"
                )
        except (RedisError, OSError) as exc:
            self._redis_failed(exc)
            await asyncio.sleep(min(1.0, self._heartbeat))
            return None
        return None if job_id is None else job_id.decode()

    async def _hand_back(self, job_ids: list[str]) -> int:
        return await self._reclaim(
            keys=[self.keys.claimed, self.keys.queue], args=[keys.job_key_prefix, *job_ids]
        )

    # -- running one job ------------------------------------------------------------------

    async def _run_job(self, job_id: str) -> None:
        try:
            await self._start_and_run(job_id)
        finally:
            self._cancelled.pop(job_id, None)

    async def _start_and_run(self, job_id: str) -> None:
        assert self.redis is not None
        job_key = keys.job_key(job_id)
        now = time.time()
        try:
            flat = await self._start(
                keys=[job_key, self.keys.claimed, self.keys.running],
                args=[job_id, now, now + self._lease, self.name, _rq_now()],
            )
        except (RedisError, OSError) as exc:  # the id stays claimed; housekeeping hands it back
            log.warning("job %s: cannot start (%s)", job_id, exc)
            return
        if not flat:
            return  # cancelled, or recovered elsewhere: not ours to run
        try:
            claimed = decode_claimed(job_id, flat, self.redis)
        except CorruptJobError as exc:
            log.error("%s", exc)
            await self._finish(job_id, Failed(JobError.from_exception(exc), None))
            return
        memo = RedisStepMemo(self.redis, job_key, claimed.steps, self._retrying)
        progress = ProgressWriter(self.redis, job_key)

        def make_context(definition: Any) -> JobContext:
            return JobContext(
                job_id=job_id,
                job_name=claimed.job_name,
                attempt=claimed.attempt,
                engine="rq",
                progress_sink=progress.report,
                step=MemoSteps(
                    memo,
                    self._clock,
                    timedelta(seconds=self.settings.sleep_threshold),
                    before_step=lambda step_id: self._refuse_if_cancelled(job_id, job_key, step_id),
                ),
            )

        outcome: Outcome | str
        if job_id in self._cancelled:  # cancelled after it started, before its handler did
            outcome = Cancelled
        else:
            outcome = await self._call_handler(job_id, claimed, make_context)
        await progress.flush()
        await self._retrying(lambda: self._finish(job_id, outcome))

    async def _refuse_if_cancelled(self, job_id: str, job_key: str, step_id: str) -> None:
        """Called right before a step function runs (never for a replayed step): one
        round trip, BEGIN_STEP, which atomically refuses the step once a cancel was
        accepted, and otherwise records when the step was let start. A refused step ends
        the attempt cancelled through a `CancelledError`, which a handler's `except
        Exception` does not catch; FINISH would record it cancelled in any case."""
        field = keys.step_began_prefix + step_id
        admitted = await self._retrying(lambda: self._begin_step(keys=[job_key], args=[field]))
        if admitted is None:  # aborting while Redis is away: the job goes back to the queue
            raise asyncio.CancelledError
        if not admitted:
            log.info("job %s: cancelled; step %r does not start", job_id, step_id)
            self._cancelled[job_id] = time.monotonic()  # interrupted now, see `_cancel_local`
            raise asyncio.CancelledError

    async def _call_handler(
        self, job_id: str, claimed: ClaimedJob, make_context: Callable[[Any], JobContext]
    ) -> Outcome | str:
        """One execution of the job's handler; only while it runs may it be interrupted."""
        self._in_handler.add(job_id)
        try:
            return await execute_job(
                claimed.job_name,
                claimed.payload,
                claimed.attempt,
                make_context,
                registry=self._registry,
                queues=self._queues,
            )
        except asyncio.CancelledError:
            return Cancelled if job_id in self._cancelled else Requeue
        except (RedisError, OSError) as exc:  # a step could not be saved: retry the attempt
            return Failed(JobError.from_exception(exc), timedelta(seconds=1))
        finally:
            self._in_handler.discard(job_id)

    async def _finish(self, job_id: str, outcome: Outcome | str) -> None:
        """Record the outcome, if this worker still holds the job's lease."""
        now = time.time()
        kind, due, ttl, fields = self._describe(outcome, now)
        q = self.keys
        args: list[Any] = [job_id, kind, now, due, ttl, self.settings.failure_ttl, _rq_now()]
        for item in fields.items():
            args.extend(item)
        written = await self._finish_script(
            keys=[
                keys.job_key(job_id),
                q.running,
                q.scheduled,
                q.queue,
                q.finished,
                q.failed,
                q.canceled,
            ],
            args=args,
        )
        if not written:
            log.warning("job %s: lease lost before it finished; it runs again elsewhere", job_id)
        elif written == 2:
            log.info("job %s: cancelled (the cancel came before it could end %s)", job_id, kind)
        else:
            log.debug("job %s: %s", job_id, kind)

    def _describe(
        self, outcome: Outcome | str, now: float
    ) -> tuple[str, float, int, dict[str, Any]]:
        """(script outcome, due time, ttl, fields to write) for an execution's outcome."""
        s = self.settings
        match outcome:
            case Succeeded(result):
                return "succeeded", 0, s.result_ttl, {"jk_result": json.dumps(result)}
            case Suspended(wake_at):
                return "sleep", wake_at.timestamp(), 0, {}
            case Failed(error, None):
                return "failed", 0, s.failure_ttl, {"jk_error": encode_error(error)}
            case Failed(error, retry_in):
                return "retry", now + retry_in.total_seconds(), 0, {"jk_error": encode_error(error)}
            case "cancelled":
                return "cancelled", 0, s.failure_ttl, {}
        return "requeue", 0, 0, {}

    # -- housekeeping ---------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        """Keep this worker visible and the leases of its running jobs fresh; pick up
        cancellations the listener missed, and repeat those a handler did not honour."""
        while True:
            await asyncio.sleep(self._heartbeat)
            try:
                await self._renew()
            except (RedisError, OSError) as exc:
                self._redis_failed(exc)
            else:
                self._redis_ok()

    async def _renew(self) -> None:
        assert self.redis is not None
        running = list(self._running)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(
                self.worker_key,
                mapping={
                    "last_heartbeat": _rq_now(),
                    "jk_heartbeat": time.time(),
                    "state": "busy" if running else "idle",
                },
            )
            pipe.expire(self.worker_key, int(self._lease) + 60)
            expiry = time.time() + self._lease
            for job_id in running:
                pipe.zadd(self.keys.running, {job_id: expiry}, xx=True)
                pipe.hget(keys.job_key(job_id), "jk_cancel")
            replies = await pipe.execute()
        for job_id, flag in zip(running, replies[3::2], strict=False):
            if flag:
                self._cancel_local(job_id)

    async def _housekeeping(self) -> None:
        """Promote due scheduled jobs; every heartbeat also recover abandoned ones."""
        next_recovery, seen_claimed = 0.0, set[str]()
        while True:
            try:
                wait = await self._promote_due()
                if time.monotonic() >= next_recovery:
                    next_recovery = time.monotonic() + self._heartbeat
                    seen_claimed = await self._recover_abandoned(seen_claimed)
            except (RedisError, OSError) as exc:
                self._redis_failed(exc)
                wait = 1.0
            await asyncio.sleep(wait)

    async def _promote_due(self) -> float:
        """Move due jobs to the queue; return how long until the next one is due (≤ 1 s)."""
        now = time.time()
        _, next_due = await self._promote(
            keys=[self.keys.scheduled, self.keys.queue], args=[now, 500, keys.job_key_prefix]
        )
        if next_due is None:
            return 1.0
        return min(1.0, max(0.01, float(next_due) - now))

    async def _recover_abandoned(self, seen_claimed: set[str]) -> set[str]:
        """Retry jobs whose lease expired, and hand back ids popped by a worker that died
        before starting them (seen on two passes in a row)."""
        assert self.redis is not None
        # Renew our own leases first: after a Redis outage they may look expired, and a
        # job this worker still runs must not be handed to another.
        await self._renew()
        recovered = await self._recover(
            keys=[self.keys.running, self.keys.queue, self.keys.failed, self.keys.canceled],
            args=[
                time.time(),
                keys.job_key_prefix,
                encode_error(_ABANDONED),
                self.settings.failure_ttl,
            ],
        )
        for job_id in recovered:
            log.warning("job %s: its worker stopped responding; retried or failed", job_id.decode())
        claimed = {j.decode() for j in await self.redis.lrange(self.keys.claimed, 0, -1)}
        stale = (claimed & seen_claimed) - set(self._running)
        if stale:
            await self._hand_back(sorted(stale))
        return claimed - stale

    async def _listen_for_cancels(self) -> None:
        assert self.redis is not None
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(keys.cancel_channel)
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            self._cancel_local(message["data"].decode())
            except (RedisError, OSError):
                await asyncio.sleep(1.0)

    def _cancel_local(self, job_id: str) -> None:
        """Honour the cancellation of a job running here, whatever point it has reached.

        Called by the listener and, while the job's cancel flag is set, on every heartbeat.
        Before the handler starts the job is only marked, and `_start_and_run` skips the
        handler. A running handler is interrupted, and interrupted again a heartbeat later
        if it still runs: one `Task.cancel()` can be lost, as on Python 3.11, whose
        `asyncio.wait_for` (redis-py wraps every command in it) swallows a cancellation
        that arrives just as the awaitable it wraps completes.
        """
        task = self._running.get(job_id)
        if task is None or task.done():
            return
        if job_id not in self._cancelled:
            log.info("job %s: cancelled while running", job_id)
            self._cancelled[job_id] = None
        if job_id not in self._in_handler:
            return
        last = self._cancelled[job_id]
        now = time.monotonic()
        if last is not None:
            if now - last < self._heartbeat:
                return  # interrupted moments ago: the handler may still be unwinding
            log.warning("job %s: the cancellation was not honoured; interrupting again", job_id)
        self._cancelled[job_id] = now
        task.cancel()
