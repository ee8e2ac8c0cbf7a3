"""Cancelling the jobs a worker is running, so that `cancel_job` returning True holds.

The cancel script (engine side) marks a running job with `jk_cancel` and publishes its id.
Three things on the worker side make that mark stick, each covering what the others miss:

- the listener hears the id at once and interrupts the handler at its current `await`;
- the heartbeat reads the mark of every running job, for a message the listener missed,
  and interrupts again a handler that swallowed the first interruption;
- before each step function runs, BEGIN_STEP checks the mark atomically in Redis, so no
  step starts once the cancel was accepted, however the handler treats interruptions.

Whatever the attempt then ends with, FINISH records the job cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from jobkit_dispatch.engines.rq import keys
from jobkit_dispatch.engines.rq.guard import LoopGuard

if TYPE_CHECKING:
    from jobkit_dispatch.engines.rq.link import WorkerLink

log = logging.getLogger("jobkit.worker")


class Cancellations:
    """The running jobs of one worker that were asked to cancel, and their interruption."""

    def __init__(self, running: dict[str, asyncio.Task[None]], heartbeat: float) -> None:
        self._running = running  # job id -> its task: shared with the worker
        self._heartbeat = heartbeat
        self.in_handler: set[str] = set()  # jobs whose handler runs: only those are interrupted
        # Jobs asked to cancel -> when their handler was last interrupted (monotonic), None
        # while it has not started. See `cancel_local`.
        self._cancelled: dict[str, float | None] = {}
        self.listener_guard: LoopGuard | None = None  # set once `listen` runs
        self._garbage_heard = False  # a published id that is not UTF-8 was logged

    def __contains__(self, job_id: str) -> bool:
        """Whether `job_id` was asked to cancel while it ran here."""
        return job_id in self._cancelled

    def forget(self, job_id: str) -> None:
        """The job is done here."""
        self._cancelled.pop(job_id, None)

    def cancel_local(self, job_id: str) -> None:
        """Honour the cancellation of a job running here, whatever point it has reached.

        Called by the listener and, while the job's cancel flag is set, on every heartbeat.
        Before the handler starts the job is only marked, and the executor skips the
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
        if job_id not in self.in_handler:
            return
        last = self._cancelled[job_id]
        now = time.monotonic()
        if last is not None:
            if now - last < self._heartbeat:
                return  # interrupted moments ago: the handler may still be unwinding
            log.warning("job %s: the cancellation was not honoured; interrupting again", job_id)
        self._cancelled[job_id] = now
        task.cancel()

    async def listen(self, link: WorkerLink) -> None:
        """Hear cancellations as they are accepted; reconnect after a Redis outage, and
        after anything else, logged once (`guard`): a worker that stopped listening would
        still cancel, but a heartbeat late."""
        guard = self.listener_guard = LoopGuard("cancel listener", link.name)
        while True:
            try:
                async with link.redis.pubsub() as pubsub:
                    await pubsub.subscribe(keys.cancel_channel)
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            self._heard(message["data"])
                            guard.ok()
            except (RedisError, OSError):
                await asyncio.sleep(1.0)
            except Exception as exc:
                await guard.failed(exc)

    def _heard(self, data: bytes) -> None:
        """A published id: one that is not UTF-8 names no job of ours."""
        try:
            job_id = data.decode()
        except UnicodeDecodeError:
            level = logging.DEBUG if self._garbage_heard else logging.WARNING
            self._garbage_heard = True
            log.log(level, "ignoring a cancellation of job id %r: not valid UTF-8", data)
            return
        self.cancel_local(job_id)

    def step_gate(
        self, link: WorkerLink, job_id: str, job_key: str
    ) -> Callable[[str], Awaitable[None]]:
        """The `before_step` hook of one job's steps (see `MemoSteps`)."""

        async def before_step(step_id: str) -> None:
            await self._refuse_if_cancelled(link, job_id, job_key, step_id)

        return before_step

    async def _refuse_if_cancelled(
        self, link: WorkerLink, job_id: str, job_key: str, step_id: str
    ) -> None:
        """Called right before a step function runs (never for a replayed step): one
        round trip, BEGIN_STEP, which atomically refuses the step once a cancel was
        accepted, and otherwise records when the step was let start. A refused step ends
        the attempt cancelled through a `CancelledError`, which a handler's `except
        Exception` does not catch; FINISH would record it cancelled in any case."""
        field = keys.step_began_prefix + step_id
        admitted = await link.retrying(lambda: link.begin_step(keys=[job_key], args=[field]))
        if admitted is None:  # aborting while Redis is away: the job goes back to the queue
            raise asyncio.CancelledError
        if not admitted:
            log.info("job %s: cancelled; step %r does not start", job_id, step_id)
            self._cancelled[job_id] = time.monotonic()  # interrupted now: see `cancel_local`
            raise asyncio.CancelledError
