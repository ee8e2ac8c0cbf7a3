"""Taking jobs off the queue: at most `concurrency` at once, each in its own task.

A pop moves the id from the queue to the queue's claimed list in one command (BLMOVE),
so an id is never only in a worker's memory: if the worker dies before the job starts,
housekeeping finds the id in the claimed list and hands it back. A stop request
interrupts a blocking pop at once, and whatever was popped meanwhile is handed back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

if TYPE_CHECKING:
    from jobkit_dispatch.engines.rq.link import WorkerLink

POP_TIMEOUT = 1.0  # seconds a pop blocks: bounds how long a stop request waits


class Fetcher:
    """Pops job ids and hands each to `run_job` in a task of its own."""

    def __init__(
        self,
        link: WorkerLink,
        running: dict[str, asyncio.Task[None]],
        run_job: Callable[[str], Awaitable[None]],
        *,
        concurrency: int,
        stopping: asyncio.Event,
        burst: bool,
        backoff: float,
    ) -> None:
        self._link = link
        self._running = running  # job id -> its task: shared with the worker
        self._run_job = run_job
        self._concurrency = concurrency
        self._stopping = stopping
        self._burst = burst  # stop once the queue is empty and nothing runs
        self._backoff = backoff  # how long to wait after a failed pop

    async def fetch(self) -> None:
        """Take jobs until asked to stop (or, in burst mode, until the queue is empty)."""
        slots = asyncio.Semaphore(self._concurrency)
        while not self._stopping.is_set():
            await slots.acquire()
            if self._stopping.is_set():
                break
            job_id = await self._pop()
            if job_id is None:
                slots.release()
                if self._burst:
                    if not self._running:
                        break
                    await asyncio.wait(
                        list(self._running.values()), return_when=asyncio.FIRST_COMPLETED
                    )
                continue
            if self._stopping.is_set():  # popped while stopping: hand it back untouched
                await self._link.retrying(lambda j=job_id: self._link.hand_back([j]), attempts=5)
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
        if self._burst:
            return await self._pop_now()
        pop = asyncio.create_task(self._pop_now())
        stop = asyncio.create_task(self._stopping.wait())
        await asyncio.wait({pop, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if pop.done():
            return pop.result()
        pop.cancel()
        await asyncio.gather(pop, return_exceptions=True)
        await self._link.retrying(self._hand_back_orphans, attempts=3)
        return None

    async def _hand_back_orphans(self) -> None:
        link = self._link
        claimed = {j.decode() for j in await link.redis.lrange(link.keys.claimed, 0, -1)}
        orphans = sorted(claimed - set(self._running))
        if orphans:
            await link.hand_back(orphans)

    async def _pop_now(self) -> str | None:
        link = self._link
        try:
            if self._burst:
                job_id = await link.redis.lmove(link.keys.queue, link.keys.claimed)
            else:
                job_id = await link.redis.blmove(
                    link.keys.queue, link.keys.claimed, POP_TIMEOUT, "LEFT", "RIGHT"
                )
        except (RedisError, OSError) as exc:
            link.failed(exc)
            await asyncio.sleep(self._backoff)
            return None
        return None if job_id is None else job_id.decode()
