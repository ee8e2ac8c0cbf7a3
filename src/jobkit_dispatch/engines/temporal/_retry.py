"""Retrying a failed or cancelled job: a new run of its workflow, from the failed step.

The new run has the same workflow id (so `get_job` and `cancel_job` find it: they read
an id's latest run), started with the id reuse policy `ALLOW_DUPLICATE_FAILED_ONLY`:
Temporal starts it only while the latest run has failed, was cancelled, terminated or
timed out, so two retries at once make one run. Its input is the earlier run's, plus:

- `seed`: the results of the steps the job's runs completed (`ActivityTaskCompleted`, by
  activity id) and the wake times of the sleeps they reached (timers, by summary), which
  the workflow's step memo starts from: the job resumes at the step that failed, and a
  sleep that is over is not slept again. `from_scratch` seeds nothing;
- `earlier_attempts`: the attempt log so far, for `describe`; `retries`, one more.

The results travel in the input, so they must fit in one Temporal payload with the job's
payload (`RETRY_INPUT_LIMIT`); a job whose completed steps returned more is retried from
scratch or not at all (`PayloadTooLargeError`).

`created_at` stays the job's. The earlier runs stay in Temporal's history until its
retention ends (the listing skips them: a job is its latest run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from temporalio.common import TypedSearchAttributes, WorkflowIDConflictPolicy
from temporalio.common import WorkflowIDReusePolicy as Reuse
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from jobkit.errors import (
    CorruptJobError,
    JobNotFoundError,
    JobNotRetryableError,
    PayloadTooLargeError,
)
from jobkit_dispatch.engines.recovery import RETRYABLE_STATUSES
from jobkit_dispatch.engines.temporal._detail import history
from jobkit_dispatch.engines.temporal._history import job_input, seed, traces
from jobkit_dispatch.engines.temporal._model import WORKFLOW_NAME, JobInput, JobState
from jobkit_dispatch.engines.temporal._reading import Link, describe_run, job_info, job_state
from jobkit_engine import JobInfo
from jobkit_engine.runtime import json_size

if TYPE_CHECKING:
    from jobkit_dispatch.engines.temporal._attributes import Registration

RETRY_INPUT_LIMIT = 2_000_000
"""Bytes of JSON a retry's input may have: Temporal refuses a payload past 2 MiB."""


async def retry(link: Link, attributes: Registration, job_id: str, from_scratch: bool) -> JobInfo:
    """Start the job again (see the module docstring) and return its new state."""
    job, task_queue = await _retryable(link, job_id, from_scratch)
    try:
        named = await attributes.for_job(
            link.client, link.rpc_timeout, job.job_name, job.queue, job.created_at
        )
        try:
            await _start(link, job, job_id, task_queue, named)
        except RPCError as exc:  # refused before anything was written
            if not named.search_attributes or not attributes.refused(exc):
                raise
            await _start(link, job, job_id, task_queue, TypedSearchAttributes.empty)
    except RPCError as exc:
        raise link.unavailable(exc) from exc
    run = await describe_run(link, job_id)
    state = None if run is None else await job_state(run)
    if run is None or state is None:  # deleted in between
        raise JobNotFoundError(job_id)
    return await job_info(link, run, state)


async def _retryable(link: Link, job_id: str, from_scratch: bool) -> tuple[JobInput, str]:
    """The input of the run that retries the job, and its task queue: the earlier run's."""
    run = await describe_run(link, job_id)
    state = None if run is None else await job_state(run)
    if run is None or state is None:
        raise JobNotFoundError(job_id)
    info = await job_info(link, run, state)
    if info.status not in RETRYABLE_STATUSES:
        raise JobNotRetryableError(job_id, info.status)
    events = await history(link, run)
    converter = link.client.data_converter
    earlier = job_input(events, converter)
    if earlier is None:
        raise CorruptJobError(job_id, "its workflow input is no jobkit job: it cannot be rerun")
    steps = [] if from_scratch else seed(earlier, traces(events, converter, closed=True))
    job = earlier.model_copy(
        update={
            "seed": steps,
            "earlier_attempts": state.final_log(info),
            "retries": state.retries + 1,
            "scheduled_for": None,
            # RQ's copy, if there was one, was settled by the first run.
            "fence_rq": False,
            "hand_over_rq": False,
        }
    )
    size = json_size(job.model_dump(mode="json"))
    if size > RETRY_INPUT_LIMIT:
        done = sum(step.done for step in steps)
        what = (
            f"the retry of job {job_id!r} (its payload and the results of {done} completed "
            "steps; a retry from scratch carries none)"
        )
        raise PayloadTooLargeError(what, size, RETRY_INPUT_LIMIT)
    return job, run.task_queue


async def _start(
    link: Link, job: JobInput, job_id: str, task_queue: str, named: TypedSearchAttributes
) -> None:
    try:
        await link.client.start_workflow(
            WORKFLOW_NAME,
            job,
            id=job_id,
            task_queue=task_queue,
            id_reuse_policy=Reuse.ALLOW_DUPLICATE_FAILED_ONLY,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            memo=JobState.initial(job).memo(),
            search_attributes=named,
            static_summary=job.job_name,
            rpc_timeout=link.rpc_timeout,
        )
    except WorkflowAlreadyStartedError:
        # Another retry started it first (or it succeeded meanwhile): it is no longer
        # failed or cancelled.
        run = await describe_run(link, job_id)
        state = None if run is None else await job_state(run)
        if run is None or state is None:
            raise JobNotFoundError(job_id) from None
        raise JobNotRetryableError(job_id, (await job_info(link, run, state)).status) from None
