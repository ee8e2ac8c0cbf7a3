"""The inline engine's operator capabilities (`jobkit_dispatch.engines.recovery`): list its
jobs, read one in full, retry a failed or cancelled one from the step that failed, purge
ended ones.

The jobs live in this process's memory, so a page filters them all with `JobQuery.matches`
and sorts them in the listing order: the bounded page of the contract is for engines with
a store to walk; here every page is complete up to its frontier.
"""

from __future__ import annotations

import threading
from typing import ClassVar

from jobkit.errors import JobNotFoundError, JobNotRetryableError
from jobkit_dispatch.engines.inline.record import JobRecord
from jobkit_dispatch.engines.recovery import (
    PURGEABLE_STATUSES,
    RETRYABLE_STATUSES,
    JobDetail,
    JobPage,
    JobQuery,
    ListPosition,
)
from jobkit_engine import Clock, JobInfo, JobStatus


class InlineOperations:
    """`ListsJobs`, `RetriesJobs` and `PurgesJobs` for `InlineEngine`, whose jobs are
    `_records` under `_lock`. None of them waits for a job: the async twins are the sync
    methods."""

    name: ClassVar[str]
    clock: Clock
    _lock: threading.Lock
    _records: dict[str, JobRecord]

    def _start_soon(self, record: JobRecord) -> None:
        """Hand the job to the engine's loop (the engine's own)."""

    # -- ListsJobs -----------------------------------------------------------------------

    def list_jobs(self, query: JobQuery) -> JobPage:
        if query.limit < 1:
            raise ValueError(f"a page holds at least one job, not limit={query.limit}")
        with self._lock:
            infos = [record.info(self.name) for record in self._records.values()]
        matching = sorted((info for info in infos if query.matches(info)), key=ListPosition.of)
        page = tuple(matching[: query.limit])
        more = len(matching) > query.limit
        return JobPage(page, ListPosition.of(page[-1]) if more else None)

    async def alist_jobs(self, query: JobQuery) -> JobPage:
        return self.list_jobs(query)

    def describe(self, job_id: str) -> JobDetail | None:
        with self._lock:
            record = self._records.get(job_id)
            return None if record is None else record.detail(self.name, self.clock.now())

    async def adescribe(self, job_id: str) -> JobDetail | None:
        return self.describe(job_id)

    # -- RetriesJobs ---------------------------------------------------------------------

    def retry(self, job_id: str, *, from_scratch: bool = False) -> JobInfo:
        with self._lock:
            record = self._records.get(job_id)
            if record is None:
                raise JobNotFoundError(job_id)
            if record.status not in RETRYABLE_STATUSES:
                raise JobNotRetryableError(job_id, record.status.value)
            record.new_round(from_scratch=from_scratch)
            info = record.info(self.name)
        self._start_soon(record)
        return info

    async def aretry(self, job_id: str, *, from_scratch: bool = False) -> JobInfo:
        return self.retry(job_id, from_scratch=from_scratch)

    # -- PurgesJobs ----------------------------------------------------------------------

    def purge(self, queue: str, status: JobStatus) -> int:
        if status not in PURGEABLE_STATUSES:
            allowed = ", ".join(sorted(PURGEABLE_STATUSES))
            raise ValueError(f"only ended jobs are purged ({allowed}), not {status!r}")
        with self._lock:
            doomed = [
                job_id
                for job_id, record in self._records.items()
                if record.request.queue == queue and record.status == status
            ]
            for job_id in doomed:
                del self._records[job_id]
        return len(doomed)

    async def apurge(self, queue: str, status: JobStatus) -> int:
        return self.purge(queue, status)
