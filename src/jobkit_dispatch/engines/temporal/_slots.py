"""Per-worker job slots: how many jobs of a queue run at once on one worker.

Temporal limits activities and workflow tasks, but a job's handler runs in its workflow
and holds nothing while it awaits, so the queue's concurrency would bound only its steps.
jobkit's contract is that a queue's concurrency bounds the jobs *running* on a worker (a
sleeping or backing-off job gives its slot back), so each worker keeps a `SlotPool` per
task queue:

- a job takes a slot through a local activity (`ACQUIRE_SLOT`), so the decision is
  recorded in its history and a replay takes the same path; the answer names the pool
  (a random key), so the workflow finds the pool again to give the slot back;
- a job that gets none waits for the `SLOT_SIGNAL` this pool sends when a slot frees up
  (first come, first served), and asks again now and then in case this worker died;
- the workflow gives the slot back by calling `release` directly: it is idempotent per
  token, so a replay that passes the same point again changes nothing.

A slot is held under a lease (the attempt's timeout), so a job whose workflow moved to
another worker cannot hold a slot here forever.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable

log = logging.getLogger("jobkit.temporal.slots")

Nudge = Callable[[str], Awaitable[None]]

_RESERVATION_TTL = 60.0  # seconds a woken job has to claim the slot kept for it


class SlotPool:
    """`size` slots, FIFO waiters, and a way to wake a waiter (`nudge`, a coroutine)."""

    def __init__(
        self, size: int, nudge: Nudge | None = None, loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        self.size = size
        self.key = uuid.uuid4().hex
        self._nudge = nudge
        self._loop = loop
        self._lock = threading.Lock()
        self._held: dict[str, float] = {}  # token -> lease expiry (monotonic)
        self._reserved: dict[str, float] = {}  # job id -> reservation expiry
        self._waiters: OrderedDict[str, None] = OrderedDict()

    def try_acquire(self, job_id: str, token: str, lease: float) -> bool:
        """Take a slot for `token` (one attempt of `job_id`), or queue `job_id` and say no."""
        with self._lock:
            now = time.monotonic()
            self._expire(now)
            woken = self._grant(now)
            if token in self._held:
                acquired = True
            elif self._reserved.pop(job_id, None) is not None or self._free() > 0:
                # A free slot means nobody waits: _grant just handed slots to waiters.
                self._held[token] = now + lease
                acquired = True
            else:
                self._waiters.setdefault(job_id, None)
                acquired = False
        self._wake([w for w in woken if w != job_id])
        return acquired

    def release(self, token: str) -> None:
        """Give back the slot of `token`, if this pool holds it, and wake the next waiter."""
        with self._lock:
            if self._held.pop(token, None) is None:
                return
            woken = self._grant(time.monotonic())
        self._wake(woken)

    def forget(self, job_id: str) -> None:
        """`job_id` no longer waits (it was cancelled): drop its place or its reservation."""
        with self._lock:
            self._waiters.pop(job_id, None)
            if self._reserved.pop(job_id, None) is None:
                return
            woken = self._grant(time.monotonic())
        self._wake(woken)

    def release_job(self, job_id: str) -> None:
        """Give back whatever `job_id` holds or waits for: its workflow was terminated and
        will not do it itself."""
        prefix = f"{job_id}/"  # tokens are job id / run id / attempt
        with self._lock:
            for token in [t for t in self._held if t.startswith(prefix)]:
                del self._held[token]
            self._waiters.pop(job_id, None)
            self._reserved.pop(job_id, None)
            woken = self._grant(time.monotonic())
        self._wake(woken)

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._held)

    def _free(self) -> int:
        return self.size - len(self._held) - len(self._reserved)

    def _expire(self, now: float) -> None:
        for table in (self._held, self._reserved):
            for key in [k for k, expiry in table.items() if expiry <= now]:
                log.warning("slot of %s expired without being released", key)
                del table[key]

    def _grant(self, now: float) -> list[str]:
        """Reserve free slots for the first waiters (caller holds the lock)."""
        woken = []
        while self._waiters and self._free() > 0:
            job_id, _ = self._waiters.popitem(last=False)
            self._reserved[job_id] = now + _RESERVATION_TTL
            woken.append(job_id)
        return woken

    def _wake(self, job_ids: list[str]) -> None:
        if not job_ids or self._nudge is None or self._loop is None:
            return
        for job_id in job_ids:
            # release() is called from workflow threads: the nudge runs on the worker's loop.
            self._loop.call_soon_threadsafe(self._spawn_nudge, job_id)

    def _spawn_nudge(self, job_id: str) -> None:
        assert self._nudge is not None
        task = asyncio.ensure_future(self._nudge_or_forget(job_id))
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def _nudge_or_forget(self, job_id: str) -> None:
        assert self._nudge is not None
        try:
            await self._nudge(job_id)
        except Exception as exc:  # the job is gone (finished, cancelled): pass the slot on
            log.debug("could not wake job %s: %s", job_id, exc)
            self.forget(job_id)


_background: set[asyncio.Task[None]] = set()

_pools: dict[str, SlotPool] = {}
_pools_lock = threading.Lock()


def register_pool(pool: SlotPool) -> SlotPool:
    """Make `pool` findable by its key from workflow code in this process."""
    with _pools_lock:
        _pools[pool.key] = pool
    return pool


def unregister_pool(pool: SlotPool) -> None:
    with _pools_lock:
        _pools.pop(pool.key, None)


def pool_for(key: str | None) -> SlotPool | None:
    """The pool `key` names, or None: a replay in another process finds nothing to free."""
    return None if key is None else _pools.get(key)
