"""A job's side of the per-worker job slots (the pool is `_slots`): ask for a slot, wait
for one while the queue is full, give it back.

A slot lives in the worker process, outside history, so only live execution touches it:
a replay passes points the original run already passed, and an eviction (which runs as a
replay) must not free a slot that the job, resumed here, still holds. Whether a slot was
granted is in the history (the local activity's result), so a replay takes the same path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, is_cancelled_exception

from jobkit_dispatch.engines.temporal._guard import HistoryGuard
from jobkit_dispatch.engines.temporal._model import ACQUIRE_SLOT
from jobkit_dispatch.engines.temporal._slots import pool_for

# A queued job asks again, in case its worker died: after 30 s, then at doubling intervals
# up to 5 min (a freed slot wakes it at once by signal). Each round adds about five events
# to its history, so a job queued for a long time ages slowly: some 60 events an hour.
SLOT_RECHECK = timedelta(seconds=30)
SLOT_RECHECK_MAX = timedelta(minutes=5)
LEASE_MARGIN = 60.0  # seconds a slot may outlive the attempt's timeout


class JobSlot:
    """The slot one job holds, or waits for, on the worker that runs its workflow."""

    def __init__(self, history: HistoryGuard) -> None:
        self.lease = 0.0  # seconds a slot is held at most: the attempt's timeout
        self.freed = False  # set by the workflow's `SLOT_SIGNAL` handler
        self._history = history
        self._token: str | None = None
        self._pool: str | None = None  # the key of the pool the last slot came from
        self._taken = 0

    async def acquire(self, on_queued: Callable[[], None]) -> None:
        """Wait for a slot of the job's queue on this worker; `on_queued` when there is
        none yet. A cancel while asking is an `asyncio.CancelledError`, as at any await."""
        self._taken += 1
        info = workflow.info()
        token = f"{info.workflow_id}/{info.run_id}/{self._taken}"
        recheck = SLOT_RECHECK
        while True:
            # A job queued for days asks again and again: each round adds events.
            self._history.check("another request for a slot")
            self.freed = False
            try:
                grant = await workflow.execute_local_activity(
                    ACQUIRE_SLOT,
                    args=[info.workflow_id, token, self.lease + LEASE_MARGIN],
                    start_to_close_timeout=timedelta(seconds=10),
                )
            except ActivityError as exc:
                if is_cancelled_exception(exc):
                    raise asyncio.CancelledError() from exc
                raise
            self._pool = grant["pool"]
            if grant["acquired"]:
                self._token = token
                return
            on_queued()
            try:
                await workflow.wait_condition(
                    lambda: self.freed, timeout=recheck, timeout_summary="slot recheck"
                )
            except TimeoutError:
                recheck = min(recheck * 2, SLOT_RECHECK_MAX)
                continue

    def release(self) -> None:
        """Give the slot back, if the job holds one."""
        token, self._token = self._token, None
        pool = pool_for(self._pool)
        if token is not None and pool is not None and not workflow.unsafe.is_replaying():
            pool.release(token)

    def forget(self) -> None:
        """The job no longer waits for a slot (it ended): drop its place in the queue."""
        pool = pool_for(self._pool)
        if pool is not None and not workflow.unsafe.is_replaying():
            pool.forget(workflow.info().workflow_id)
