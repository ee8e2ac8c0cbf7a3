"""The one workflow that runs every job: `JobWorkflow`.

It is the thin processor of the other engines, inside Temporal: it resolves the job by
name in the registry and runs one attempt through `execute_job`, with a `JobContext`
whose steps are activities and whose sleeps are durable timers. The attempt loop is the
workflow's own: a retryable failure waits the job's backoff on a timer and runs the
handler again with `ctx.attempt + 1`; steps that completed are answered from the results
the workflow keeps, so they are not run again (Temporal replays them from history after a
worker restart). A retried job is a new run that starts from the results of the steps
its earlier runs completed (`JobInput.seed`, see `_retry`). The job's state goes to the
workflow memo at every change, with a short log of its attempts.

What an execution ended with is decided by `settle`, as on every engine: also a handler
interrupted by a cancel (`Cancelled`), and a job stopped by the history guard (`_guard`)
while it waited for a slot or a retry. Every wait that adds events to the history (a
step, a sleep, a backoff, a round of asking for a slot) is checked by that guard first.

Code outside steps runs as workflow code: it must be deterministic (see the docs).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError, is_cancelled_exception

from jobkit.errors import HistoryLimitError
from jobkit.queues import default_queues
from jobkit_dispatch.engines.temporal._fence import handed_over, settle_with_rq, start_hand_over
from jobkit_dispatch.engines.temporal._guard import HistoryGuard
from jobkit_dispatch.engines.temporal._job_slot import JobSlot
from jobkit_dispatch.engines.temporal._joblog import log_decision, log_sleep
from jobkit_dispatch.engines.temporal._model import (
    SLOT_SIGNAL,
    WORKFLOW_NAME,
    ErrorState,
    JobInput,
    JobState,
    ProgressState,
)
from jobkit_dispatch.engines.temporal._unknown import HandBack, unknown_here
from jobkit_dispatch.engines.temporal._workflow_steps import (
    ActivitySteps,
    cancel_requested,
    refuse_if_cancelled,
)
from jobkit_engine import JobContext, JobDefinition, JobError, JobStatus, Progress, default_registry
from jobkit_engine.runtime import (
    Cancelled,
    Decision,
    Failed,
    Finish,
    Outcome,
    RunAgain,
    attempt_deadline,
    attempt_timeout,
    execute_job,
    settle,
)

ENGINE = "temporal"


def _stopped_by(exc: HistoryLimitError | asyncio.CancelledError) -> Outcome | None:
    """What `exc`, raised out of the handler or a wait of the workflow's own (for a slot,
    a retry), means for `settle`; None when the run ends for another reason (an
    eviction cancels every task of the workflow, with no cancel requested)."""
    if isinstance(exc, HistoryLimitError):
        return Failed(JobError.from_exception(exc), None)
    return Cancelled() if cancel_requested() else None


@workflow.defn(name=WORKFLOW_NAME)
class JobWorkflow:
    """Runs one job: its attempts, steps, sleeps and status, from enqueue to a final state."""

    @workflow.init
    def __init__(self, job: JobInput) -> None:
        self._state = JobState.initial(job)
        self._sleep_threshold = timedelta(seconds=job.sleep_threshold)
        self._heartbeat_timeout = (
            None
            if job.step_heartbeat_timeout is None
            else timedelta(seconds=job.step_heartbeat_timeout)
        )
        self._results: dict[str, Any] = job.seed_results()  # a retry's completed steps
        self._max_bytes = job.max_payload_bytes
        self._history = HistoryGuard.of(job)
        self._dirty = False
        self._slot = JobSlot(self._history)
        self._hand_over: asyncio.Future[Any] | None = None  # starting the `FenceWorkflow`

    @workflow.signal(name=SLOT_SIGNAL)
    def slot_free(self) -> None:
        self._slot.freed = True

    @workflow.run
    async def run(self, job: JobInput) -> Any:
        try:
            result = await self._run(job)
        except BaseException as exc:
            # However the job ends, it holds no slot of this worker and waits for none.
            self._slot.release()
            self._slot.forget()
            await handed_over(self._hand_over)
            if (
                is_cancelled_exception(exc)
                or isinstance(exc, ApplicationError | workflow.NondeterminismError | HandBack)
                or not isinstance(exc, Exception)
            ):
                raise
            # A fault of this workflow (not of the handler, which execute_job contains):
            # fail the job instead of leaving a workflow task to retry forever.
            raise ApplicationError(
                f"{type(exc).__name__}: {exc}", type=type(exc).__name__, non_retryable=True
            ) from exc
        if await handed_over(self._hand_over):  # a cancel came as it started: it wins
            log_decision(self._state, Finish(JobStatus.CANCELLED))  # the last word logged
            raise asyncio.CancelledError()
        return result

    async def _run(self, job: JobInput) -> Any:
        unknown = unknown_here(job)  # a rolling deploy: HandBack, for a worker that knows it
        if unknown is not None:  # and none came within the grace period
            failed = self._settle(unknown)
            assert isinstance(failed, Finish)
            return self._finish(failed)
        if job.fence_rq and not await self._fence_rq(job):
            return None
        if job.hand_over_rq:  # RQ is told later; the job runs meanwhile
            self._hand_over = start_hand_over(workflow.info().workflow_id, job)
            self._set(fencing=None)
        definition = (
            default_registry.get(job.job_name) if job.job_name in default_registry else None
        )
        if definition is not None:
            self._slot.lease = attempt_timeout(definition, default_queues).total_seconds()
        attempt = 0
        while True:
            attempt += 1
            # An unknown job fails at once, without a slot.
            decision = self._settle(await self._execute(job, attempt, definition is not None))
            if isinstance(decision, Finish):
                return self._finish(decision)
            if decision.resume:
                attempt -= 1  # the next execution continues this attempt
            try:
                await self._wait_to_run_again(decision)
            except (HistoryLimitError, asyncio.CancelledError) as exc:
                stopped = _stopped_by(exc)
                if stopped is None:
                    raise
                decision = self._settle(stopped)
                assert isinstance(decision, Finish)  # cancelled, or failed for good
                return self._finish(decision)

    async def _fence_rq(self, job: JobInput) -> bool:
        """Settle with the copy of this job RQ may hold, before any job code runs. True:
        the job is this workflow's to run. False: an RQ worker had it first; this run ends
        without running it, and `get_job` reports RQ's job. A job cancelled meanwhile ends
        cancelled here once RQ's copy is settled."""
        owner, cancelled = await settle_with_rq(workflow.info().workflow_id, job.reason)
        self._set(fencing=None, moved_to="rq" if owner == "rq" else None)
        if cancelled or owner == "rq":
            self._flush()
        if cancelled:
            raise asyncio.CancelledError()
        return owner != "rq"

    async def _execute(self, job: JobInput, attempt: int, in_slot: bool) -> Outcome:
        """One execution of the handler, in a slot of its queue when `in_slot`.

        A cancel that interrupts the handler, or the wait for its slot, is the `Cancelled`
        outcome, and the history limit reached while waiting for a slot a final failure:
        `settle` decides, as for anything else the execution ends with.
        """
        try:
            if in_slot:
                await self._slot.acquire(self._queued)
            self._state.attempt_began(attempt, workflow.now())
            self._set(
                status=JobStatus.RUNNING,
                attempts=attempt,
                started_at=workflow.now(),
                scheduled_for=None,
            )
            return await execute_job(
                job.job_name,
                job.payload,
                attempt,
                self._context_factory(attempt),
                max_bytes=self._max_bytes,
                rng=workflow.random(),
            )
        except (HistoryLimitError, asyncio.CancelledError) as exc:
            stopped = _stopped_by(exc)
            if stopped is None:
                raise
            return stopped
        finally:
            self._slot.release()

    def _settle(self, outcome: Outcome) -> Decision:
        decision = settle(outcome, now=workflow.now(), cancel_requested=cancel_requested())
        log_decision(self._state, decision)
        return decision

    def _finish(self, decision: Finish) -> Any:
        """End the workflow as the job ends: its result, a failure, or cancelled."""
        if decision.status == JobStatus.CANCELLED:
            raise asyncio.CancelledError()  # the workflow ends cancelled
        if decision.status == JobStatus.SUCCEEDED:
            # get_job reads success, its time and the result from the closed workflow:
            # the memo changes only if something else did in this activation.
            if self._dirty:
                self._state.attempt_ended("succeeded", workflow.now(), None)
            self._flush()
            return decision.result
        assert decision.error is not None
        error = ErrorState.of(decision.error)
        self._state.attempt_ended("failed", workflow.now(), decision.error)
        self._set(status=JobStatus.FAILED, error=error)
        self._flush()
        raise ApplicationError(decision.error.message, type=error.type, non_retryable=True)

    async def _wait_to_run_again(self, decision: RunAgain) -> None:
        """Wait, on a durable timer, until the next execution is due."""
        self._history.check(f"the retry after attempt {self._state.attempts}")
        if not decision.resume:
            self._state.attempt_ended("retrying", workflow.now(), decision.error)
        self._set(
            status=decision.status,
            scheduled_for=decision.at,
            **({} if decision.error is None else {"error": ErrorState.of(decision.error)}),
        )
        remaining = None if decision.at is None else decision.at - workflow.now()
        if remaining is not None and remaining > timedelta(0):
            await workflow.sleep(remaining, summary="retry backoff")

    def _context_factory(self, attempt: int) -> Callable[[JobDefinition[Any, Any]], JobContext]:
        def make_context(definition: JobDefinition[Any, Any]) -> JobContext:
            return JobContext(
                job_id=workflow.info().workflow_id,
                job_name=definition.name,
                attempt=attempt,
                engine=ENGINE,
                step=ActivitySteps(self, definition).steps(),
                progress_sink=self._set_progress,
            )

        return make_context

    async def sleep_durably(self, step_id: str, wake_at: datetime) -> None:
        """A long sleep: give the slot back, wait on a timer, take a slot again.

        The time asleep does not count against the attempt's timeout, as on engines where a
        long sleep ends the execution; as there, a cancelled job does not start one.
        """
        await refuse_if_cancelled(step_id)
        self._history.check(f"sleep {step_id!r}")
        deadline = attempt_deadline()
        when = None if deadline is None else deadline.when()
        loop = asyncio.get_running_loop()
        left = None if when is None else when - loop.time()
        if deadline is not None:
            deadline.reschedule(None)
        self._slot.release()
        log_sleep(self._state, wake_at)
        self._set(status=JobStatus.SLEEPING, scheduled_for=wake_at)
        await workflow.sleep(wake_at - workflow.now(), summary=step_id)
        await self._slot.acquire(self._queued)
        self._set(status=JobStatus.RUNNING, scheduled_for=None, started_at=workflow.now())
        if deadline is not None and left is not None:
            deadline.reschedule(loop.time() + left)

    # -- state ----------------------------------------------------------------------------

    def _set(self, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(self._state, name, value)
        self._mark_dirty()

    def _queued(self) -> None:
        if self._state.status != JobStatus.QUEUED:
            self._set(status=JobStatus.QUEUED)

    def _set_progress(self, progress: Progress) -> None:
        self._set(progress=ProgressState.of(progress))

    def _mark_dirty(self) -> None:
        # One memo update per workflow activation, however often the state changes in it.
        if not self._dirty:
            self._dirty = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        if self._dirty:
            self._dirty = False
            workflow.upsert_memo(self._state.memo())
