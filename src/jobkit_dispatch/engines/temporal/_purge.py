"""Purging a queue's ended jobs: every run of each job, deleted from Temporal.

The runs are read page by page (the server's page token is a position in its order, so
deleting what was read does not move the pages after it), and each job's runs deleted
with `DeleteWorkflowExecution`, a few at a time. Temporal deletes a closed run only once
the run's close is acknowledged, which a server records every 30 s by default
(`history.transferProcessorUpdateAckInterval`; the dev server of the fixtures: 1 s):
`purge` returns when the deletions have taken effect, so `get_job` finds none of the jobs
afterwards.
"""

from __future__ import annotations

import asyncio
import logging

from temporalio.api.common.v1 import WorkflowExecution as Run
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
SETTLE = 60.0  # seconds to wait for the deletions to take effect, at most

log = logging.getLogger("jobkit.temporal")


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
    jobs = 0
    deleted: list[Run] = []  # every run, the earlier runs of retried jobs too
    while True:
        try:
            await runs.fetch_next_page()
        except RPCError as exc:
            raise link.unavailable(exc) from exc
        page = list(runs.current_page or ())
        earlier = await lister.superseded(page)
        latest = [run for run in page if run.run_id not in earlier]
        outcomes = await asyncio.gather(*(_delete_job(lister, r, status, slots) for r in latest))
        for job, runs_deleted in outcomes:
            jobs += job
            deleted += runs_deleted
        if runs.next_page_token is None:
            break
    await _gone(lister, deleted, slots)
    return jobs


async def _gone(lister: Lister, runs: list[Run], slots: asyncio.Semaphore) -> None:
    """Wait until Temporal has deleted `runs` (a deletion takes effect once the run's close
    is acknowledged), for at most `SETTLE` seconds: then `get_job` no longer finds them."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE
    while runs and loop.time() < deadline:
        left = await asyncio.gather(*(_exists(lister, run, slots) for run in runs))
        runs = [run for run, exists in zip(runs, left, strict=True) if exists]
        if runs:
            await asyncio.sleep(0.1)
    if runs:
        log.warning("%d purged Temporal runs were not deleted yet after %g s", len(runs), SETTLE)


async def _exists(lister: Lister, run: Run, slots: asyncio.Semaphore) -> bool:
    async with slots:
        handle = lister.link.client.get_workflow_handle(run.workflow_id, run_id=run.run_id)
        try:
            await handle.describe(rpc_timeout=lister.link.rpc_timeout)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return False
            raise lister.link.unavailable(exc) from exc
        return True


async def _delete_job(
    lister: Lister, run: WorkflowExecution, status: JobStatus, slots: asyncio.Semaphore
) -> tuple[bool, list[Run]]:
    """Delete the job whose latest run is `run` if it ended with `status`: whether it was
    deleted here (not by someone else meanwhile), and the runs deleted."""
    async with slots:
        state = await job_state(run)
        if state is None:  # not a job of this engine
            return False, []
        try:
            ended = quick_status(run, state) or (await job_info(lister.link, run, state)).status
        except JobNotFoundError:  # deleted by someone else meanwhile
            return False, []
        if ended != status:
            return False, []
        runs = [Run(workflow_id=run.id, run_id=run.run_id)]
        if state.retries:  # its earlier runs go too, or the latest of them would be the job
            where = [f"WorkflowType = {quote(WORKFLOW_NAME)}", f"WorkflowId = {quote(run.id)}"]
            found = (await lister.fetch(where, MAX_BUDGET))[0]
            earlier = [each for each in found if each.run_id != run.run_id]
            runs = [Run(workflow_id=each.id, run_id=each.run_id) for each in earlier] + runs
        # The earlier runs first: the job never shows as one of them meanwhile.
        deleted = [each for each in runs if await _delete(lister, each)]
        return bool(deleted) and deleted[-1] == runs[-1], deleted


async def _delete(lister: Lister, run: Run) -> bool:
    link = lister.link
    request = DeleteWorkflowExecutionRequest(namespace=link.namespace, workflow_execution=run)
    try:
        await link.client.workflow_service.delete_workflow_execution(
            request, retry=True, timeout=link.rpc_timeout
        )
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:  # deleted by someone else meanwhile
            return False
        raise link.unavailable(exc) from exc
    return True
