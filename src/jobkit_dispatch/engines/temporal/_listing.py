"""Listing jobs through Temporal's visibility API, in the order of `ListPosition`.

What the server does (checked on the dev server's SQL visibility, Temporal CLI 1.9.1 with
server 1.32): `ListWorkflowExecutions` returns the open runs first, latest start first,
then the closed runs, latest close first, ties by run id descending; it refuses ORDER BY.

- **Ended jobs**: that order is the listing's (a job's `finished_at` is its run's close
  time), so they are read as the server returns them, from `CloseTime < after`.
- **Open jobs** are listed by creation, and the server orders runs by start: the two part
  for a retried job (its run starts when it is retried) and, by milliseconds, for jobs
  that different clients created. So the open jobs of a page are read as a set — the runs
  created in a window up to `after` (`JobkitCreatedAt`) — and sorted here. The window is
  unbounded below at first; if it holds more runs than the page's budget, it is narrowed
  to begin at the `limit`-th latest creation time among the runs read, and read again.
- jobkit statuses that are no Temporal status (queued, scheduled and sleeping runs are
  running; a terminated run is failed or cancelled) are filtered here, among at most a
  budget of runs: a page that spends it before finding `limit` jobs ends at a frontier.
- A job is the latest run of its id: a failed or cancelled run whose job was retried
  since is skipped (one more query per page, by id, finds them).
- On a server without jobkit's search attributes (`_attributes`), open jobs are windowed
  by their start (a retried open job may then be out of order), a queue is found by its
  task queue, and listing by job name raises `ConfigurationError` naming the fix.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from temporalio.client import WorkflowExecution, WorkflowExecutionStatus
from temporalio.service import RPCError

from jobkit.errors import JobNotFoundError
from jobkit_dispatch.engines.recovery import (
    OPEN_STATUSES,
    PURGEABLE_STATUSES,
    JobPage,
    JobQuery,
    ListPosition,
)
from jobkit_dispatch.engines.temporal._attributes import (
    CREATED_AT,
    JOB_NAME,
    QUEUE,
    Registration,
    timestamp,
    unregistered,
)
from jobkit_dispatch.engines.temporal._model import WORKFLOW_NAME, JobState
from jobkit_dispatch.engines.temporal._reading import Link, job_info, job_state, quick_status
from jobkit_engine import JobInfo, JobStatus

MIN_BUDGET = 100  # runs a page may read from the server, at least
MAX_BUDGET = 1000  # and at most (the server's page size limit)
_NARROWINGS = 8  # each leaves out budget - limit runs of the window or more

# The Temporal statuses of a jobkit status that has ended.
CLOSED_STATUSES = {
    JobStatus.SUCCEEDED: ("Completed",),
    JobStatus.FAILED: ("Failed", "TimedOut", "Terminated"),
    JobStatus.CANCELLED: ("Canceled", "Terminated"),
}
# A run a retry may follow: the job's latest run can be a later one.
_RETRYABLE_RUNS = {
    WorkflowExecutionStatus.FAILED,
    WorkflowExecutionStatus.CANCELED,
    WorkflowExecutionStatus.TERMINATED,
    WorkflowExecutionStatus.TIMED_OUT,
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def budget(limit: int) -> int:
    """How many runs a page of `limit` jobs may read from the server."""
    return min(max(2 * limit, MIN_BUDGET), MAX_BUDGET)


def quote(value: str) -> str:
    """`value` as a string literal of a visibility query."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class Unregistered(Exception):
    """The server refused a query naming jobkit's search attributes."""


@dataclass
class Lister:
    """Reads pages of jobs for one engine (see the module docstring)."""

    link: Link
    attributes: Registration
    task_queue_prefix: str

    async def page(self, query: JobQuery) -> JobPage:
        named = self.attributes.usable
        try:
            return await self._page(query, named)
        except Unregistered as exc:
            if not named or not self.attributes.refused(exc.__cause__ or exc):
                raise
            return await self._page(query, False)

    async def _page(self, query: JobQuery, named: bool) -> JobPage:
        limit = max(1, query.limit)
        after = query.after
        jobs: list[JobInfo] = []
        open_jobs = query.status is None or query.status in OPEN_STATUSES
        if open_jobs and (after is None or not after.finished):
            jobs, frontier = await self._open(query, limit, named)
            if frontier is not None:
                return JobPage(tuple(jobs), frontier)
        if query.status is not None and query.status not in PURGEABLE_STATUSES:
            return JobPage(tuple(jobs))
        if len(jobs) == limit:  # ended jobs may follow
            return JobPage(tuple(jobs), ListPosition.of(jobs[-1]))
        after = after if after is not None and after.finished else None
        ended, frontier = await self._closed(query, after, limit - len(jobs), named)
        return JobPage(tuple(jobs + ended), frontier)

    # -- open jobs --------------------------------------------------------------------------

    async def _open(
        self, query: JobQuery, limit: int, named: bool
    ) -> tuple[list[JobInfo], ListPosition | None]:
        """The first `limit` open jobs, and where they end (None: no more open jobs)."""
        runs, lower = await self._open_window(query, limit, named)
        found: list[JobInfo] = []
        for run in runs:
            state = await job_state(run)
            info = None if state is None else await job_info(self.link, run, state)
            if info is None or info.status.is_terminal or not query.matches(info):
                continue  # not a job of this engine, closed meanwhile, or filtered out
            if lower is None or ListPosition.of(info).at >= lower:
                found.append(info)
        found.sort(key=ListPosition.of)
        if len(found) > limit:
            return found[:limit], ListPosition.of(found[limit - 1])
        return found, None if lower is None else ListPosition(False, lower, "")

    async def _open_window(
        self, query: JobQuery, limit: int, named: bool
    ) -> tuple[list[WorkflowExecution], datetime | None]:
        """Every open run created in a window up to `query.after`, and where the window
        begins (None: unbounded)."""
        where = [*self.filters(query, named), "ExecutionStatus = 'Running'"]
        if query.since is not None:
            where.append(self._created(named, ">=", query.since))
        if query.until is not None:
            where.append(self._created(named, "<", query.until))
        if query.after is not None:
            # A frontier of this engine's (no job id) comes after every job created then.
            op = "<" if query.after.job_id == "" else "<="
            where.append(self._created(named, op, query.after.at))
        runs, more = await self.fetch(where, budget(limit))
        lower: datetime | None = None
        for _ in range(_NARROWINGS):
            if not more:
                break
            lower = await _nth_latest_creation(runs, limit)
            runs, more = await self.fetch(
                [*where, self._created(named, ">=", lower)], budget(limit)
            )
        return runs, lower

    def _created(self, named: bool, op: str, at: datetime) -> str:
        """A bound on when a job was created: its run's start for runs without
        `JobkitCreatedAt` (started while the server did not know it)."""
        value = quote(timestamp(at))
        if not named:
            return f"StartTime {op} {value}"
        created = CREATED_AT.name
        return f"({created} {op} {value} OR ({created} IS NULL AND StartTime {op} {value}))"

    # -- ended jobs -------------------------------------------------------------------------

    async def _closed(
        self, query: JobQuery, after: ListPosition | None, limit: int, named: bool
    ) -> tuple[list[JobInfo], ListPosition | None]:
        """The first `limit` ended jobs from `after`, and where they end (None: no more)."""
        where = [*self.filters(query, named), _closed_status(query.status)]
        if query.since is not None:
            where.append(f"CloseTime >= {quote(timestamp(query.since))}")
        if query.until is not None:
            where.append(f"CloseTime < {quote(timestamp(query.until))}")
        if after is not None:  # the same microsecond too: ties are decided by the job id
            where.append(f"CloseTime < {quote(timestamp(after.at + _MICROSECOND))}")
        runs, more = await self.fetch(where, budget(limit))
        candidates = await self._candidates(runs, query.status, after)
        found: list[JobInfo] = []
        done = 0
        while done < len(candidates):
            # Read as many at once as could still be listed (a succeeded job's result is
            # one history read each).
            chunk = candidates[done : done + limit - len(found)]
            infos = await asyncio.gather(*(self._info(run, state) for _, run, state in chunk))
            for (position, _, _), info in zip(chunk, infos, strict=True):
                done += 1
                if info is None or (query.status is not None and info.status != query.status):
                    continue
                found.append(info)
                if len(found) == limit:
                    last = done == len(candidates) and not more
                    return found, None if last else position
        if not more or not runs:
            return found, None
        return found, max(_closed_position(run) for run in runs)

    async def _info(self, run: WorkflowExecution, state: JobState) -> JobInfo | None:
        try:
            return await job_info(self.link, run, state)
        except JobNotFoundError:  # purged since it was listed
            return None

    async def _candidates(
        self, runs: list[WorkflowExecution], status: JobStatus | None, after: ListPosition | None
    ) -> list[tuple[ListPosition, WorkflowExecution, JobState]]:
        """The runs that may be jobs to list, in the listing order: latest runs of jobkit
        jobs after `after`, whose status, where it is known without a call, is `status`."""
        earlier = await self.superseded(runs)
        candidates = []
        for run in runs:
            position = _closed_position(run)
            if run.run_id in earlier or (after is not None and not after < position):
                continue
            state = await job_state(run)
            if state is None:
                continue
            quick = quick_status(run, state)
            if status is None or quick is None or quick == status:
                candidates.append((position, run, state))
        candidates.sort(key=lambda candidate: candidate[0])
        return candidates

    async def superseded(self, runs: list[WorkflowExecution]) -> set[str]:
        """The run ids among `runs` of jobs that were retried since: not the latest run."""
        ids = sorted({run.id for run in runs if run.status in _RETRYABLE_RUNS})
        if not ids:
            return set()
        where = [
            f"WorkflowType = {quote(WORKFLOW_NAME)}",
            f"WorkflowId IN ({', '.join(quote(job_id) for job_id in ids)})",
        ]
        latest: dict[str, str] = {}
        # The server lists an id's latest run first: open, else the last one to close.
        for run in (await self.fetch(where, min(MAX_BUDGET, 10 * len(ids))))[0]:
            latest.setdefault(run.id, run.run_id)
        return {run.run_id for run in runs if latest.get(run.id, run.run_id) != run.run_id}

    # -- queries ----------------------------------------------------------------------------

    def filters(self, query: JobQuery, named: bool) -> list[str]:
        """The conditions on a run of a job of `query`'s queue and name."""
        where = [f"WorkflowType = {quote(WORKFLOW_NAME)}"]
        if query.queue is not None:
            if named:
                where.append(f"{QUEUE.name} = {quote(query.queue)}")
            else:
                where.append(f"TaskQueue = {quote(self.task_queue_prefix + query.queue)}")
        if query.job_name is not None:
            if not named:
                raise self.attributes.missing("by job name")
            where.append(f"{JOB_NAME.name} = {quote(query.job_name)}")
        return where

    async def fetch(self, where: list[str], size: int) -> tuple[list[WorkflowExecution], bool]:
        """One page of runs matching all of `where`, and whether the server has more."""
        iterator = self.link.client.list_workflows(
            " AND ".join(where), page_size=size, rpc_timeout=self.link.rpc_timeout
        )
        try:
            await iterator.fetch_next_page()
        except RPCError as exc:
            if unregistered(exc):
                raise Unregistered(str(exc)) from exc
            raise self.link.unavailable(exc) from exc
        return list(iterator.current_page or ()), iterator.next_page_token is not None


def _closed_status(status: JobStatus | None) -> str:
    if status is None:
        return "ExecutionStatus != 'Running'"
    return f"ExecutionStatus IN ({', '.join(map(quote, CLOSED_STATUSES[status]))})"


def _closed_position(run: WorkflowExecution) -> ListPosition:
    return ListPosition(True, run.close_time or _EPOCH, run.id)


async def _nth_latest_creation(runs: list[WorkflowExecution], n: int) -> datetime:
    """The `n`-th latest creation time among `runs` (the earliest, if fewer). A window
    from there leaves out the rest of `runs`: read again, it holds fewer runs each time."""
    times = []
    for run in runs:
        state = await job_state(run)
        times.append((state.created_at if state is not None else None) or run.start_time)
    times.sort(reverse=True)
    return times[min(n, len(times)) - 1]
