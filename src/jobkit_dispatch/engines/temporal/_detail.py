"""One job in full (`describe`): its run's description, memo and history.

The payload is the workflow's input; the steps are the history's activities and timers
(`_history`), after those its earlier runs completed when it was retried; the attempts
are the memo's log, which a retried run carries on from the runs before it.
"""

from __future__ import annotations

from datetime import UTC, datetime

from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowExecution, WorkflowExecutionDescription
from temporalio.client import WorkflowExecutionStatus as Status
from temporalio.service import RPCError, RPCStatusCode

from jobkit.durations import utcnow
from jobkit.errors import JobNotFoundError
from jobkit_dispatch.engines.recovery import AttemptRecord, JobDetail
from jobkit_dispatch.engines.temporal._history import job_input, timeline, traces
from jobkit_dispatch.engines.temporal._reading import Link, describe_run, job_info, job_state


async def describe(link: Link, job_id: str) -> JobDetail | None:
    """The job in full, or None when this engine has no job `job_id`."""
    run = await describe_run(link, job_id)
    state = None if run is None else await job_state(run)
    if run is None or state is None:
        return None
    try:
        info = await job_info(link, run, state)
        events = await history(link, run)
    except JobNotFoundError:  # deleted since it was described
        return None
    converter = link.client.data_converter
    job = job_input(events, converter)
    closed = run.status not in (None, Status.RUNNING)
    run_steps = traces(events, converter, closed=closed, pending=_pending(run))
    attempts = tuple(
        AttemptRecord(
            entry.number,
            entry.outcome,
            entry.started_at,
            entry.finished_at,
            None if entry.error is None else entry.error.error(),
        )
        for entry in state.final_log(info)
    )
    extra = {
        "run_id": run.run_id,
        "task_queue": run.task_queue,
        "history_length": run.history_length,
        "summary": await run.static_summary(),  # what the Temporal UI shows beside the type
        "search_attributes": {
            pair.key.name: pair.value for pair in run.typed_search_attributes.search_attributes
        },
    }
    return JobDetail(
        info,
        payload=None if job is None else job.payload,
        attempts=attempts,
        steps=tuple(timeline(job, run_steps, utcnow())),
        retries=state.retries,
        extra=extra,
    )


async def history(link: Link, run: WorkflowExecution) -> list[HistoryEvent]:
    """The events of one run; `JobNotFoundError` when the run was deleted."""
    handle = link.client.get_workflow_handle(run.id, run_id=run.run_id)
    try:
        return list((await handle.fetch_history(rpc_timeout=link.rpc_timeout)).events)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise JobNotFoundError(run.id) from exc
        raise link.unavailable(exc) from exc


def _pending(run: WorkflowExecutionDescription) -> dict[str, datetime | None]:
    """When each activity running now started (None: scheduled, not started yet)."""
    return {
        activity.activity_id: (
            activity.last_started_time.ToDatetime(tzinfo=UTC)
            if activity.HasField("last_started_time")
            else None
        )
        for activity in run.raw_description.pending_activities
    }
