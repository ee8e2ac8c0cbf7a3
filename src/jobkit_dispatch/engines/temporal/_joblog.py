"""The job outcome lines of `JobWorkflow`, in the words of every engine (`log_outcome`).

Workflow code runs again whenever a worker replays a job's history (after a restart, or
when the job left the worker's cache), so the lines go through temporalio's logger
adapter, which is silent while history is replayed: an outcome is logged when it happens,
not again at each replay. The adapter also puts the workflow's ids into the record
(`temporal_workflow`), for a JSON formatter.
"""

from __future__ import annotations

import logging
from datetime import datetime

from temporalio import workflow

from jobkit_dispatch.engines.temporal._model import JobState
from jobkit_engine import JobStatus
from jobkit_engine.runtime import JOB_LOGGER, Decision, Suspended, log_outcome, settle

_log = workflow.LoggerAdapter(logging.getLogger(JOB_LOGGER), None)
_log.workflow_info_on_message = False  # the line names the job already


def log_decision(state: JobState, decision: Decision) -> None:
    """Log what the workflow does with the job after an execution (or a wait) ended."""
    now = workflow.now()
    started = state.started_at if state.status == JobStatus.RUNNING else None
    log_outcome(
        decision,
        job_id=workflow.info().workflow_id,
        job_name=state.job_name,
        queue=state.queue,
        engine="temporal",
        attempt=state.attempts or None,
        duration=None if started is None else (now - started).total_seconds(),
        now=now,
        logger=_log,
    )


def log_sleep(state: JobState, wake_at: datetime) -> None:
    """A long sleep: on the other engines it ends the execution, so it is logged as such."""
    log_decision(state, settle(Suspended(wake_at), now=workflow.now()))
