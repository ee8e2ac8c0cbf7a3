"""Purging a queue's ended jobs: every run of each job, deleted from Temporal.

The runs are read page by page (the server's page token is a position in its order, so
deleting what was read does not move the pages after it), and each job's runs deleted
with `DeleteWorkflowExecution`, a few at a time. Temporal deletes a closed run once the
run's close has reached its visibility store: on a production server's defaults that
can take half a minute, during which `get_job` may still find the job.
"""

from __future__ import annotations

import asyncio

from temporalio.api.common.v1 import WorkflowExecution as RunRef
from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest
from temporalio.client import WorkflowExecution
from temporalio.service import RPCError, RPCStatusCode

from jobkit.errors import JobNotFoundError
from jobkit_dispatch.engines.recovery import PURGEABLE_STATUSES, JobQuery
from jobkit_dispatch.engines.temporal._listing import (
    CLOSED_STATUSES,
    MAX_BUDGET,
    Lister,
    Unregistered,
    quote,
)
from jobkit_dispatch.engines.temporal._model import WORKFLOW_NAME
from jobkit_dispatch.engines.temporal._reading import job_info, job_state, quick_status
from jobkit_engine import JobStatus

PAGE = 200  # runs read per page
DELETES_IN_FLIGHT = 16


async def purge(lister: Lister, queue: str, status: JobStatus) -> int:
    """Delete every job of `queue` that ended with `status`; how many were deleted."""
    if status not in PURGEABLE_STATUSES:
        raise ValueError(f"only ended jobs can be purged, not {status!r} ones")
    named = lister.attributes.usable
    try:
        return await _purge(lister, queue, status, named)
    except Unregistered as exc:
        if not named or not lister.attributes.refused(exc.__cause__ or exc):
            raise
        return await _purge(lister, queue, status, False)


async def _purge(lister: Lister, queue: str, status: JobStatus, named: bool) -> int:
    link = lister.link
    where = lister.filters(JobQuery(queue=queue), named)
    where.append(f"ExecutionStatus IN ({', '.join(map(quote, CLOSED_STATUSES[status]))})")
    runs = link.client.list_workflows(
        " AND ".join(where), page_size=PAGE, rpc_timeout=link.rpc_timeout
    )
    slots = asyncio.Semaphore(DELETES_IN_FLIGHT)
    deleted = 0
    while True:
        try:
            await runs.fetch_next_page()
        except RPCError as exc:
            raise link.unavailable(exc) from exc
        page = list(runs.current_page or ())
        earlier = await lister.superseded(page)
        jobs = [run for run in page if run.run_id not in earlier]
        outcomes = await asyncio.gather(*(_delete_job(lister, run, status, slots) for run in jobs))
        deleted += sum(outcomes)
        if runs.next_page_token is None:
            return deleted


async def _delete_job(
    lister: Lister, run: WorkflowExecution, status: JobStatus, slots: asyncio.Semaphore
) -> bool:
    """Delete the job whose latest run is `run` if it ended with `status`."""
    async with slots:
        state = await job_state(run)
        if state is None:  # not a job of this engine
            return False
        try:
            ended = quick_status(run, state) or (await job_info(lister.link, run, state)).status
        except JobNotFoundError:  # deleted by someone else meanwhile
            return False
        if ended != status:
            return False
        earlier: list[str] = []
        if state.retries:  # its earlier runs go too, or the latest of them would be the job
            where = [f"WorkflowType = {quote(WORKFLOW_NAME)}", f"WorkflowId = {quote(run.id)}"]
            earlier = [each.run_id for each in (await lister.fetch(where, MAX_BUDGET))[0]]
        for run_id in earlier:  # first: the job never shows as one of them meanwhile
            if run_id != run.run_id:
                await _delete(lister, run.id, run_id)
        return await _delete(lister, run.id, run.run_id)


async def _delete(lister: Lister, job_id: str, run_id: str) -> bool:
    link = lister.link
    request = DeleteWorkflowExecutionRequest(
        namespace=link.namespace, workflow_execution=RunRef(workflow_id=job_id, run_id=run_id)
    )
    try:
        await link.client.workflow_service.delete_workflow_execution(
            request, retry=True, timeout=link.rpc_timeout
        )
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:  # deleted by someone else meanwhile
            return False
        raise link.unavailable(exc) from exc
    return True
