"""Taking jobs off the queue: at most `concurrency` at once, each in its own task.

A pop moves the id from the queue to the queue's claimed list in one command (BLMOVE),
so an id is never only in a worker's memory: if the worker dies before the job starts,
housekeeping finds the id in the claimed list and hands it back. A stop request
interrupts a blocking pop at once, and whatever was popped meanwhile is handed back.
An id that is not valid UTF-8 is quarantined as it is popped (see `poison`), and any
error the loop did not expect is logged and survived (see `guard`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from jobkit_dispatch.engines.rq.guard import LoopGuard

if TYPE_CHECKING:
    from jobkit_dispatch.engines.rq.link import WorkerLink
    from jobkit_dispatch.engines.rq.poison import Poison

POP_TIMEOUT = 1.0  # seconds a pop blocks: bounds how long a stop request waits


class Fetcher:
    """Pops job ids and hands each to `run_job` in a task of its own."""

    def __init__(
        self,
        link: WorkerLink,
        running: dict[str, asyncio.Task[None]],
        run_job: Callable[[str], Awaitable[None]],
        poison: Poison,
        *,
        concurrency: int,
        stopping: asyncio.Event,
        burst: bool,
        backoff: float,
    ) -> None:
        self._link = link
        self._running = running  # job id -> its task: shared with the worker
        self._run_job = run_job
        self._poison = poison
        self.guard = LoopGuard("fetch", link.name)
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
            try:
                job_id = await self._pop()
            except Exception as exc:  # not an outage (those are ridden out): log, go on
                slots.release()
                await self.guard.failed(exc)
                continue
            self.guard.ok()
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
        claimed = set(await link.redis.lrange(link.keys.claimed, 0, -1))
        orphans = sorted(claimed - {job_id.encode() for job_id in self._running})
        if orphans:  # raw ids: one that is not UTF-8 goes back too, to be quarantined
            await link.hand_back(orphans)

    async def _pop_now(self) -> str | None:
        """Pop one id; quarantine an id that is not UTF-8 and pop again."""
        while True:
            raw = await self._pop_raw()
            if raw is None:
                return None
            try:
                return raw.decode()
            except UnicodeDecodeError:
                await self._poison.undecodable(raw)

    async def _pop_raw(self) -> bytes | None:
        link = self._link
        try:
            if self._burst:
                return await link.redis.lmove(link.keys.queue, link.keys.claimed)
            return await link.redis.blmove(
                link.keys.queue, link.keys.claimed, POP_TIMEOUT, "LEFT", "RIGHT"
            )
        except (RedisError, OSError) as exc:
            link.failed(exc)
            await asyncio.sleep(self._backoff)
            return None
