"""A job's steps inside `JobWorkflow`: step functions as activities, sleeps as timers.

Everything else about a step — its rules, its memo (`JobWorkflow._results`, shared by all
attempts, rebuilt from history on replay and seeded by a retry), sleeps — is `MemoSteps`,
as on every engine. Every timer of a step's sleep carries the step id as its summary, as
every activity of a step carries it as its activity id: `describe` and `retry` find a
job's steps in its history by them (`_history`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError
from temporalio.workflow import ActivityCancellationType

from jobkit.queues import default_queues
from jobkit_dispatch.engines.temporal._guard import HistoryGuard
from jobkit_dispatch.engines.temporal._steps import from_activity_error
from jobkit_engine import JobDefinition
from jobkit_engine.runtime import (
    WAKE_AT_KEY,
    DictStepMemo,
    MemoSteps,
    attempt_deadline,
    attempt_timeout,
)

if TYPE_CHECKING:
    from jobkit_dispatch.engines.temporal.workflow import JobWorkflow

# Temporal retries a step only when its worker is lost or it times out; a step's own
# exception is final for the attempt (the activity raises it as non-retryable).
STEP_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=0,
)
# A cancelled job waits until its running step has stopped (within about a second, the
# heartbeat throttle), so that no step goes on once get_job says cancelled.
STEP_CANCELLATION = ActivityCancellationType.WAIT_CANCELLATION_COMPLETED


class WorkflowClock:
    """Workflow time: deterministic, and skipped by Temporal's time-skipping test server.

    A short sleep waits here, on a timer of the job's history: the history guard first.
    """

    def __init__(self, history: HistoryGuard, results: dict[str, Any]) -> None:
        self._history = history
        self._results = results

    def now(self) -> datetime:
        return workflow.now()

    async def sleep_until(self, when: datetime) -> None:
        remaining = when - workflow.now()
        if remaining > timedelta(0):
            self._history.check("a sleep")
            await workflow.sleep(remaining, summary=self._sleeping(when))

    def _sleeping(self, when: datetime) -> str | None:
        """The step whose sleep wakes at `when`: `MemoSteps` wrote its wake time into the
        memo just before it sleeps."""
        wake_at = when.isoformat()
        for step_id, value in reversed(self._results.items()):
            if isinstance(value, dict) and value.get(WAKE_AT_KEY) == wake_at:
                return step_id
        return None


class ActivitySteps:
    """Where a step function runs in a workflow: an activity named after the function.

    Everything else about a step — its rules, its memo (`JobWorkflow._results`, shared by
    all attempts and rebuilt from history on replay), sleeps — is `MemoSteps`, as on
    every engine.
    """

    def __init__(self, job: JobWorkflow, definition: JobDefinition[Any, Any]) -> None:
        self._job = job
        self._timeout = attempt_timeout(definition, default_queues)

    def steps(self) -> MemoSteps:
        job = self._job
        return MemoSteps(
            DictStepMemo(job._results),
            WorkflowClock(job._history, job._results),
            job._sleep_threshold,
            max_bytes=job._max_bytes,
            run_step=self.run,
            suspend=job.sleep_durably,
            before_step=refuse_if_cancelled,
        )

    async def run(
        self, step_id: str, ref: str, fn: Callable[..., Any], call: dict[str, Any]
    ) -> Any:
        self._job._history.check(f"step {step_id!r}")
        try:
            result = await workflow.execute_activity(
                ref,
                {**call, "max_bytes": self._job._max_bytes},
                activity_id=step_id,
                summary=step_id,
                start_to_close_timeout=self._budget(),
                heartbeat_timeout=self._job._heartbeat_timeout,
                retry_policy=STEP_RETRY,
                cancellation_type=STEP_CANCELLATION,
            )
        except ActivityError as exc:
            failure = from_activity_error(step_id, exc)
            raise failure from failure.__cause__
        # A step that finished as the cancel came (STEP_CANCELLATION hands its result back):
        # the job is cancelled all the same.
        await refuse_if_cancelled(step_id)
        return result

    def _budget(self) -> timedelta:
        """What is left of the attempt's timeout: a step never outlives its attempt."""
        deadline = attempt_deadline()
        when = None if deadline is None else deadline.when()
        if when is None:
            return self._timeout
        left = when - asyncio.get_running_loop().time()
        return max(timedelta(seconds=left), timedelta(seconds=1))


def cancel_requested() -> bool:
    return workflow.cancellation_reason() is not None


async def refuse_if_cancelled(step_id: str) -> None:
    """No step starts once the job was cancelled, even in a handler that swallowed the
    interruption."""
    if cancel_requested():
        raise asyncio.CancelledError()
