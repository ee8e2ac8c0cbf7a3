"""The jobkit RQ worker: one asyncio process serving one queue, N jobs at a time.

`RQWorker` owns the lifecycle (run, graceful stop, abort) and puts together its parts,
one module each, so that each can be read alone:

- `fetch`: pops job ids, at most `concurrency` running at once;
- `execute`: runs one job: start, handler, finish;
- `housekeeping`: presence in RQ's worker registry, leases, promotion of due jobs,
  recovery of jobs whose worker died;
- `cancel`: makes a cancellation of a running job stick;
- `link`: the Redis client, scripts and outage handling they share;
- `unknown`: hands back a job this worker does not know (a rolling deploy);
- `poison`: quarantines or fails what names no job it can start;
- `guard`: keeps every loop alive through errors nobody foresaw.

Per job it makes three Redis round trips — pop (BLMOVE), start (script), finish (script)
— plus one write per completed step and one check per step function run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid

import redis.asyncio as aioredis

from jobkit.queues import QueueRegistry, default_queues
from jobkit.settings import JobkitSettings, get_settings
from jobkit_dispatch.engines.rq import keys
from jobkit_dispatch.engines.rq.cancel import Cancellations
from jobkit_dispatch.engines.rq.execute import Executor
from jobkit_dispatch.engines.rq.fetch import POP_TIMEOUT, Fetcher
from jobkit_dispatch.engines.rq.housekeeping import Housekeeper
from jobkit_dispatch.engines.rq.link import WorkerLink
from jobkit_dispatch.engines.rq.poison import Poison
from jobkit_engine import JobRegistry, default_registry

log = logging.getLogger("jobkit.worker")


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
        self._running: dict[str, asyncio.Task[None]] = {}  # job id -> the task running it
        self.cancels = Cancellations(self._running, self._heartbeat)
        self._stopping = asyncio.Event()
        self.redis: aioredis.Redis | None = None
        self.link: WorkerLink | None = None  # set by `run`

    def stop(self) -> None:
        """Finish the running jobs, take no new ones."""
        log.info("worker %s: stopping after %d running job(s)", self.name, len(self._running))
        self._stopping.set()

    def abort(self) -> None:
        """Interrupt the running jobs; they go back to the queue to run again."""
        log.warning("worker %s: aborting %d running job(s)", self.name, len(self._running))
        if self.link is not None:
            self.link.aborting = True
        self._stopping.set()
        for job_id in self.cancels.in_handler:
            self._running[job_id].cancel()

    async def _register(self, housekeeper: Housekeeper) -> bool:
        """Register, waiting for Redis as long as it takes, unless a stop comes first (a
        worker started while Redis is down must still honour SIGTERM). True if registered."""
        assert self.link is not None
        registering = asyncio.ensure_future(self.link.retrying(housekeeper.register))
        stopping = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait({registering, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if registering.done():
            registering.result()  # an unexpected error ends the worker, as before
            return True  # a stop that came meanwhile ends the fetch loop at once
        registering.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await registering
        return False

    async def run(self) -> None:
        self.redis = aioredis.Redis.from_url(
            self.settings.redis_url.get_secret_value(),
            socket_timeout=POP_TIMEOUT + 5 * self.settings.redis_socket_timeout + 1,
            socket_connect_timeout=self.settings.redis_connect_timeout,
        )
        link = self.link = WorkerLink(self.name, self.keys, self.settings, self.redis)
        poison = Poison(link)
        executor = Executor(
            link,
            self.cancels,
            lease=self._lease,
            registry=self._registry,
            queues=self._queues,
            poison=poison,
        )
        housekeeper = Housekeeper(
            link,
            self.cancels,
            self._running,
            worker_key=self.worker_key,
            heartbeat=self._heartbeat,
            lease=self._lease,
        )
        fetcher = Fetcher(
            link,
            self._running,
            executor.run_job,
            poison,
            concurrency=self.concurrency,
            stopping=self._stopping,
            burst=self.burst,
            backoff=min(1.0, self._heartbeat),
        )
        if not await self._register(housekeeper):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.redis.aclose(), 2)
            log.info("worker %s stopped before Redis answered", self.name)
            return
        log.info(
            "worker %s serving queue %r, concurrency %d",
            self.name,
            self.keys.name,
            self.concurrency,
        )
        await housekeeper.warn_about_redis_config()
        helpers = [
            asyncio.create_task(loop)
            for loop in (
                housekeeper.heartbeats(),
                housekeeper.promote_and_recover(),
                self.cancels.listen(link),
            )
        ]
        try:
            await fetcher.fetch()
            if self._running:
                await asyncio.gather(*self._running.values(), return_exceptions=True)
        finally:
            for task in helpers:
                task.cancel()
            # Bounded: a helper cancelled mid-handshake (e.g. a pubsub subscribe) must not
            # keep the worker from exiting.
            await asyncio.wait(helpers, timeout=2)
            await link.retrying(housekeeper.unregister, attempts=3)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.redis.aclose(), 2)
            log.info("worker %s stopped", self.name)
