"""Reading a job from its workflow: `JobInfo` from a run's status, close time and memo.

A run comes from `DescribeWorkflowExecution` (`get_job`, `describe`) or from a visibility
listing (`list_jobs`): both carry the status, the close time and the memo, so a job reads
the same either way. The workflow status decides the terminal states; while it runs, the
memo says queued, scheduled, running or sleeping.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from temporalio.client import (
    Client,
    WorkflowExecution,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowFailureError,
)
from temporalio.exceptions import TerminatedError
from temporalio.service import RPCError, RPCStatusCode

from jobkit.durations import utcnow
from jobkit.errors import EngineUnavailableError, JobNotFoundError
from jobkit_dispatch.engines.temporal._closed import failure_error, termination_error
from jobkit_dispatch.engines.temporal._model import MEMO_KEY, WORKFLOW_NAME, JobState
from jobkit_engine import JobError, JobInfo, JobStatus

ENGINE = "temporal"

# Codes that mean "the server cannot be reached or cannot answer now": the dispatcher
# falls back to another engine instead of failing the dispatch.
_UNAVAILABLE = {
    RPCStatusCode.UNAVAILABLE,
    RPCStatusCode.DEADLINE_EXCEEDED,
    RPCStatusCode.RESOURCE_EXHAUSTED,
    RPCStatusCode.CANCELLED,
}

# A closed run's status when the workflow status alone decides it (a termination may be
# jobkit's, for a fault: then the job failed, else it was cancelled).
_CLOSED = {
    WorkflowExecutionStatus.COMPLETED: JobStatus.SUCCEEDED,
    WorkflowExecutionStatus.FAILED: JobStatus.FAILED,
    WorkflowExecutionStatus.TIMED_OUT: JobStatus.FAILED,
    WorkflowExecutionStatus.CANCELED: JobStatus.CANCELLED,
}


@dataclass(frozen=True)
class Link:
    """The engine's connected client with what each call needs: its RPC timeout, and how
    an RPC error becomes jobkit's."""

    client: Client
    address: str
    namespace: str
    rpc_timeout: timedelta

    def unavailable(self, exc: RPCError) -> EngineUnavailableError | RPCError:
        if exc.status in _UNAVAILABLE:
            why = f"RPCError {exc.status.name}: {exc.message or 'no detail given'}"
            return EngineUnavailableError(f"Temporal at {self.address} is unavailable: {why}")
        return exc


async def describe_run(link: Link, job_id: str) -> WorkflowExecutionDescription | None:
    """The latest run of the job's workflow, or None (no such workflow, or not a job)."""
    try:
        description = await link.client.get_workflow_handle(job_id).describe(
            rpc_timeout=link.rpc_timeout
        )
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise link.unavailable(exc) from exc
    return description if description.workflow_type == WORKFLOW_NAME else None


async def job_state(run: WorkflowExecution) -> JobState | None:
    """The run's memo, or None when it is no job of this engine: no memo, or another
    engine had the job first and ran it (its marker `moved_to`)."""
    memo = await run.memo_value(MEMO_KEY, None)
    if memo is None:
        return None
    state = JobState.model_validate(memo)
    return None if state.moved_to is not None else state


def quick_status(run: WorkflowExecution, state: JobState) -> JobStatus | None:
    """The job's status without a call to the server, or None when it takes one (a
    terminated run: jobkit's termination for a fault, or a cancel)."""
    if run.status in (None, WorkflowExecutionStatus.RUNNING):
        return running_status(state, utcnow())
    return _CLOSED.get(run.status)


async def job_info(link: Link, run: WorkflowExecution, state: JobState) -> JobInfo:
    """The job as `get_job` reports it. Raises `JobNotFoundError` when its run was
    deleted since it was read (a purge)."""
    job_id = run.id
    status = run.status
    if status in (None, WorkflowExecutionStatus.RUNNING):
        return state.info(job_id, ENGINE, status=running_status(state, utcnow()))
    finished = {"finished_at": run.close_time}
    if status == WorkflowExecutionStatus.COMPLETED:
        result = await _result(link, run)
        return state.info(
            job_id, ENGINE, status=JobStatus.SUCCEEDED, result=result, error=None, **finished
        )
    if status == WorkflowExecutionStatus.FAILED:
        # The memo has the error when the workflow failed the job itself; an error it
        # holds otherwise is an earlier attempt's.
        error = state.error.error() if state.error and state.status == JobStatus.FAILED else None
        error = error or await _failure(link, run)
        return state.info(job_id, ENGINE, status=JobStatus.FAILED, error=error, **finished)
    if status == WorkflowExecutionStatus.TIMED_OUT:
        error = JobError("JobTimeoutError", "the workflow ran past its execution timeout")
        return state.info(job_id, ENGINE, status=JobStatus.FAILED, error=error, **finished)
    if status == WorkflowExecutionStatus.TERMINATED:
        error = await _termination(link, run)
        if error is not None:  # jobkit stopped the job for a fault of its own
            return state.info(job_id, ENGINE, status=JobStatus.FAILED, error=error, **finished)
    # Cancelled, or terminated by an operator: stopped on request, without a result.
    return state.info(job_id, ENGINE, status=JobStatus.CANCELLED, scheduled_for=None, **finished)


def running_status(state: JobState, now: datetime) -> JobStatus:
    """A scheduled job whose time has come waits for a worker: it is queued."""
    if state.status == JobStatus.SCHEDULED and (
        state.scheduled_for is None or state.scheduled_for <= now
    ):
        return JobStatus.QUEUED
    return state.status


async def _result(link: Link, run: WorkflowExecution) -> Any:
    """The run's result; `JobNotFoundError` when the run was deleted since it was read."""
    handle = link.client.get_workflow_handle(run.id, run_id=run.run_id)
    try:
        return await handle.result(follow_runs=False, rpc_timeout=link.rpc_timeout)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise JobNotFoundError(run.id) from exc
        raise link.unavailable(exc) from exc


async def _failure(link: Link, run: WorkflowExecution) -> JobError:
    """The failure in the workflow's history (a non-determinism error, a fault)."""
    try:
        await _result(link, run)
    except WorkflowFailureError as exc:
        return failure_error(run.id, exc.cause)
    return failure_error(run.id, None)


async def _termination(link: Link, run: WorkflowExecution) -> JobError | None:
    """The error jobkit recorded when it terminated the workflow, if it did."""
    try:
        await _result(link, run)
    except WorkflowFailureError as exc:
        if isinstance(exc.cause, TerminatedError):
            return termination_error(exc.cause.details)
    return None
