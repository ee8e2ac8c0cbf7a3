"""The fence: a job on Temporal that RQ may also hold settles with RQ's copy.

The dispatcher starts a job on Temporal with `fence_rq` when its enqueue on RQ was sent but
the reply was lost (it may have been applied). Before any job code runs, the workflow runs
the `FENCE_RQ` activity: one script on the queue Redis (`rq.scripts.FENCE`) that either
hands the job over to Temporal — a copy no RQ worker started is withdrawn, and a marker
refuses any later enqueue or start of the id on RQ — or finds that an RQ worker already
had the job, and then the workflow ends without running it. The activity retries until
Redis answers, so such a job waits for Redis.

A job with an idempotency key that RQ did not take for another reason (Redis refused or
unreachable, circuit open, no live worker, pickup timeout) carries `hand_over_rq` instead:
nothing of this dispatch is on RQ, but an earlier dispatch of the key may be. It runs at
once; alongside, the workflow starts `FenceWorkflow` (`<job id>/fence`, abandoned when the
job ends), which runs the same script whenever Redis answers — a marker, so that a later
dispatch of the key on RQ returns the Temporal job, and an earlier copy no RQ worker
started withdrawn. When an RQ worker had started that copy (before Redis went away, or
once it was back, before the hand-over got there), the job ran on both engines: the
price of running at once during an outage, logged as a warning.

Both sides: the workflow code runs in `JobWorkflow` and `FenceWorkflow`, `FenceActivities`
on the worker, which must reach the queue Redis (`JOBKIT_REDIS_URL`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from temporalio import activity, workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ApplicationError,
    ApplicationErrorCategory,
    WorkflowAlreadyStartedError,
)
from temporalio.workflow import ChildWorkflowCancellationType, ParentClosePolicy

from jobkit.errors import EngineUnavailableError, JobNotFoundError
from jobkit_dispatch.engines.temporal._model import FENCE_RQ, FENCE_WORKFLOW, JobInput

if TYPE_CHECKING:
    from jobkit.settings import JobkitSettings
    from jobkit_dispatch.engines.rq import RQEngine

ENGINE = "temporal"
T = TypeVar("T")
log = logging.getLogger("jobkit.temporal.fence")

# Retried for as long as Redis does not answer, at least every few seconds; an attempt is
# one short script call, so a waiting job holds no activity slot between attempts.
FENCE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=0.2),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=5),
    maximum_attempts=0,
)
FENCE_TIMEOUT = timedelta(seconds=10)
# A hand-over holds up no job, so it asks less often: every 10 s at most once Redis has been
# away for a while, which bounds how long after Redis is back its marker is missing.
HAND_OVER_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=0,
)


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


def start_hand_over(job_id: str, job: JobInput) -> asyncio.Future[Any]:
    """Start the `FenceWorkflow` of a job that does not wait for RQ. The job runs
    meanwhile, and awaits `handed_over` before it ends."""
    return asyncio.ensure_future(
        workflow.start_child_workflow(
            FENCE_WORKFLOW,
            args=[job_id, job.job_name, job.reason],
            id=f"{job_id}/fence",
            parent_close_policy=ParentClosePolicy.ABANDON,
            cancellation_type=ChildWorkflowCancellationType.ABANDON,
            static_summary=f"hand {job.job_name} over from RQ",
        )
    )


async def handed_over(start: asyncio.Future[Any] | None) -> bool:
    """Wait until Temporal has started the hand-over, if there is one and it has not yet
    (a workflow that ends before its child started may never start it: one round trip,
    which only a job shorter than that waits for); True when a cancel of the job came
    meanwhile. Never a wait for Redis."""
    if start is None:
        return False
    try:
        return (await _to_the_end(start))[1]
    except WorkflowAlreadyStartedError:  # started before: a replay after a reset
        return False


@workflow.defn(name=FENCE_WORKFLOW)
class FenceWorkflow:
    """Hands a job that ran on Temporal without waiting over from RQ, once Redis answers
    (see the module docstring). Its result is the engine that RQ says has the job."""

    @workflow.run
    async def run(self, job_id: str, job_name: str, reason: str) -> str:
        owner: str = await workflow.execute_activity(
            FENCE_RQ,
            args=[job_id, reason, False],
            result_type=str,
            summary="hand over from RQ",
            start_to_close_timeout=FENCE_TIMEOUT,
            retry_policy=HAND_OVER_RETRY,
        )
        if owner == "rq":
            workflow.logger.warning(
                "job %s (%s) ran on both RQ and Temporal: an RQ worker had started it for an"
                " earlier dispatch of its idempotency key, and a dispatch that RQ could not"
                " take (%s) ran it on Temporal",
                job_id,
                job_name,
                reason,
            )
        return owner


async def _to_the_end(task: asyncio.Future[T]) -> tuple[T, bool]:
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
        try:
            fenced = await asyncio.to_thread(rq.fence, job_id, ENGINE, reason)
            if fenced.engine == rq.name and cancel:
                with contextlib.suppress(JobNotFoundError):
                    await asyncio.to_thread(rq.cancel, job_id)
        except EngineUnavailableError as exc:
            raise _not_yet(job_id, exc) from None
        return fenced.engine

    def _engine(self) -> RQEngine:
        if self._rq is None:
            from jobkit.settings import get_settings
            from jobkit_dispatch.engines.rq import RQEngine

            self._rq = RQEngine(settings=self._settings or get_settings())
        return self._rq


def _not_yet(job_id: str, exc: EngineUnavailableError) -> ApplicationError:
    """The error that has Temporal retry the fence while Redis does not answer: logged
    once per job, on its first attempt, rather than as a failure with a traceback at every
    attempt (temporalio logs a benign error at debug level)."""
    if activity.info().attempt == 1:
        log.info(
            "job %s: retrying until the queue Redis answers, to settle with RQ: %s", job_id, exc
        )
    return ApplicationError(
        str(exc), type=type(exc).__name__, category=ApplicationErrorCategory.BENIGN
    )
