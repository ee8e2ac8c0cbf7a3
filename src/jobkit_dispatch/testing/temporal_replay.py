"""Check a code change against the histories of jobs that ran on Temporal.

A job still in flight on Temporal when new code is deployed is resumed by the new code,
which replays its history: if the handler now asks for other steps (renamed, reordered,
removed before the point the job reached), the job stops with a non-determinism error.
Keep the history of a job in flight (`WorkflowHistory.to_json()`, or
`temporal workflow show --workflow-id ID --output json`) and replay it in a test, with
the job's module imported, before deploying.

Needs temporalio (`pip install 'jobkit-dispatch[temporal]'`); imported only when used.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from jobkit.errors import StrictModeError
from jobkit_dispatch.engines.temporal.worker import sandbox_restrictions
from jobkit_dispatch.engines.temporal.workflow import JobWorkflow

HistorySource = WorkflowHistory | str | dict[str, Any] | os.PathLike[str]

_FIX = (
    "Jobs in flight replay their history with the new code: keep the steps they already "
    "passed (ids, order, kinds) and add new ones after them, or give the changed job a new "
    "name and let the old jobs drain"
)


async def areplay_temporal_history(
    history: HistorySource, *, job_id: str | None = None, modules: Sequence[str] = ()
) -> None:
    """Replay one job's Temporal history against the jobs registered in this process.

    `history` is a `WorkflowHistory`, its JSON (text, dict, or a file path); `job_id` is
    the job's id (the workflow id), needed for JSON. Raises `StrictModeError` naming the
    job and Temporal's reason when the code no longer replays the history.
    """
    loaded = _load(history, job_id)
    replayer = Replayer(
        workflows=[JobWorkflow],
        workflow_runner=SandboxedWorkflowRunner(restrictions=sandbox_restrictions(modules)),
        data_converter=pydantic_data_converter,
    )
    result = await replayer.replay_workflow(loaded, raise_on_replay_failure=False)
    failure = result.replay_failure
    if failure is not None:
        raise StrictModeError(
            _job_name(loaded),
            f"no longer replays the Temporal history of job {loaded.workflow_id!r}: "
            f"{_reason(failure)} ({type(failure).__name__})",
            _FIX,
        ) from failure


def replay_temporal_history(
    history: HistorySource, *, job_id: str | None = None, modules: Sequence[str] = ()
) -> None:
    """`areplay_temporal_history`, for a test with no event loop running."""
    asyncio.run(areplay_temporal_history(history, job_id=job_id, modules=modules))


def _load(history: HistorySource, job_id: str | None) -> WorkflowHistory:
    if isinstance(history, WorkflowHistory):
        return history
    if isinstance(history, os.PathLike):
        history = Path(history).read_text()
    if job_id is None:
        raise TypeError("replaying a history from JSON needs the job's id: job_id='...'")
    return WorkflowHistory.from_json(job_id, history)


def _reason(failure: Exception) -> str:
    """Temporal's own sentence, out of the activation failure that wraps it."""
    found = re.search(r'message: "(?:\[TMPRL\d+\] )?(.*?)", source', str(failure))
    return found.group(1) if found else str(failure)


def _job_name(history: WorkflowHistory) -> str:
    """The job's name, from the workflow's input (a `JobInput`) in its first event."""
    try:
        started = history.events[0].workflow_execution_started_event_attributes
        return str(json.loads(started.input.payloads[0].data)["job_name"])
    except (IndexError, KeyError, ValueError, AttributeError):
        return "?"
