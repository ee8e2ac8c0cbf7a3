"""The fence: a job that RQ may also hold settles with RQ before it runs on Temporal.

The dispatcher starts a job on Temporal with `fence_rq` when RQ may hold a copy under the
same id: its enqueue on RQ was sent but the reply was lost (it may have been applied), or
the job has an idempotency key and RQ did not take it (an earlier dispatch of the key may
have). Before any job code runs, the workflow runs the `FENCE_RQ` activity: one script on
the queue Redis (`rq.scripts.FENCE`) that either hands the job over to Temporal — a copy
no RQ worker started is withdrawn, and a marker refuses any later enqueue or start of the
id on RQ — or finds that an RQ worker already had the job, and then the workflow ends
without running it. Both sides: `settle_with_rq` runs in the workflow, `FenceActivities`
on the worker, which must reach the queue Redis (`JOBKIT_REDIS_URL`).

The activity retries until Redis answers, so a fenced job waits for Redis; a job that did
not touch Redis ambiguously (refused, circuit open, no key) carries no fence and never
waits.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import TYPE_CHECKING

from temporalio import activity, workflow
from temporalio.common import RetryPolicy

from jobkit.errors import JobNotFoundError
from jobkit_dispatch.engines.temporal._model import FENCE_RQ

if TYPE_CHECKING:
    from jobkit.settings import JobkitSettings
    from jobkit_dispatch.engines.rq import RQEngine

ENGINE = "temporal"

# Retried for as long as Redis does not answer, at least every few seconds; an attempt is
# one short script call, so a waiting job holds no activity slot between attempts.
FENCE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=0.2),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=5),
    maximum_attempts=0,
)
FENCE_TIMEOUT = timedelta(seconds=10)


async def settle_with_rq(job_id: str, reason: str) -> tuple[str, bool]:
    """(The engine that runs the job, "rq" or "temporal"; whether the job was cancelled).

    Awaited so that a cancel of the job does not interrupt it: a job cancelled meanwhile
    ends only once RQ's copy is settled — withdrawn, or, when an RQ worker had it, cancelled
    there too — so that a cancelled job cannot run later on RQ.
    """
    owner, cancelled = await _to_the_end(_fence(job_id, reason, cancel=False))
    cancelled = cancelled or workflow.cancellation_reason() is not None
    if owner == "rq" and cancelled:
        await _to_the_end(_fence(job_id, reason, cancel=True))
    return owner, cancelled


def _fence(job_id: str, reason: str, *, cancel: bool) -> asyncio.Task[str]:
    return workflow.start_activity(
        FENCE_RQ,
        args=[job_id, reason, cancel],
        result_type=str,
        summary="fence against RQ",
        start_to_close_timeout=FENCE_TIMEOUT,
        retry_policy=FENCE_RETRY,
    )


async def _to_the_end(task: asyncio.Task[str]) -> tuple[str, bool]:
    cancelled = False
    while not task.done():
        try:
            await workflow.wait([task])  # a cancel interrupts this wait, not the activity
        except asyncio.CancelledError:
            cancelled = True
    return task.result(), cancelled


class FenceActivities:
    """The fence activity of one worker, on the queue Redis of `settings`."""

    def __init__(self, settings: JobkitSettings | None) -> None:
        self._settings = settings
        self._rq: RQEngine | None = None

    @activity.defn(name=FENCE_RQ)
    async def fence_rq(self, job_id: str, reason: str, cancel: bool) -> str:
        """Hand the job over to Temporal unless an RQ worker had it; with `cancel`, also
        cancel RQ's copy. Returns the engine that runs the job. Raises while Redis does
        not answer: Temporal retries."""
        rq = self._engine()
        fenced = await asyncio.to_thread(rq.fence, job_id, ENGINE, reason)
        if fenced.engine == rq.name and cancel:
            with contextlib.suppress(JobNotFoundError):
                await asyncio.to_thread(rq.cancel, job_id)
        return fenced.engine

    def _engine(self) -> RQEngine:
        if self._rq is None:
            from jobkit.settings import get_settings
            from jobkit_dispatch.engines.rq import RQEngine

            self._rq = RQEngine(settings=self._settings or get_settings())
        return self._rq
