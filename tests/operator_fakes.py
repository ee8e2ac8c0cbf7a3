"""A small engine that keeps `JobInfo`s in memory and offers the operator capabilities,
for tests of what sits above engines: the merge of several engines' pages, the API and
the CLI. It lists with a scan budget, as a real engine may, so pages end at frontiers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import ClassVar

from jobkit.errors import EngineUnavailableError, JobNotFoundError, JobNotRetryableError
from jobkit_dispatch import Dispatcher
from jobkit_dispatch.engines.base import EngineBase, JobRequest
from jobkit_dispatch.engines.recovery import (
    RETRYABLE_STATUSES,
    AttemptRecord,
    JobDetail,
    JobPage,
    JobQuery,
    ListPosition,
    StepOutcome,
    StepRecord,
)
from jobkit_engine import JobError, JobInfo, JobStatus

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def job(
    job_id: str,
    minute: int,
    status: JobStatus = JobStatus.FAILED,
    *,
    engine: str = "a",
    name: str = "tests.sync",
    queue: str = "default",
) -> JobInfo:
    """A job created at T0 + `minute` (and ended a second later, if it ended)."""
    created = T0 + timedelta(minutes=minute)
    ended = status.is_terminal
    failed = status == JobStatus.FAILED
    return JobInfo(
        job_id=job_id,
        job_name=name,
        queue=queue,
        status=status,
        engine=engine,
        reason="forced",
        attempts=1 if ended else 0,
        max_attempts=3,
        error=JobError("ValueError", "upstream said no\nsecond line", "Traceback …\n")
        if failed
        else None,
        result={"n": 1} if status == JobStatus.SUCCEEDED else None,
        created_at=created,
        started_at=created if ended else None,
        finished_at=created + timedelta(seconds=1) if ended else None,
    )


class FakeEngine(EngineBase):
    """Jobs in a dict; `down` makes every call raise `EngineUnavailableError`; `budget`
    is how many jobs one page may examine."""

    name: ClassVar[str] = "fake"  # set per instance
    supports_listing: ClassVar[bool] = True
    supports_retry: ClassVar[bool] = True
    supports_purge: ClassVar[bool] = True

    def __init__(self, name: str, jobs: list[JobInfo] = (), *, budget: int | None = None) -> None:  # type: ignore[assignment]
        self.name = name  # type: ignore[misc]
        self.jobs = {info.job_id: replace(info, engine=name) for info in jobs}
        self.budget = budget
        self.down: str | None = None
        self.retries: dict[str, int] = {}
        self.pages_asked = 0

    def _check(self) -> None:
        if self.down is not None:
            raise EngineUnavailableError(self.down)

    def _ordered(self, after: ListPosition | None) -> Iterator[tuple[ListPosition, JobInfo]]:
        for position, info in sorted(
            ((ListPosition.of(i), i) for i in self.jobs.values()), key=lambda pair: pair[0]
        ):
            if after is None or after < position:
                yield position, info

    def list_jobs(self, query: JobQuery) -> JobPage:
        self._check()
        self.pages_asked += 1
        found: list[JobInfo] = []
        for examined, (position, info) in enumerate(self._ordered(query.after), start=1):
            if query.matches(info):
                found.append(info)
                if len(found) == query.limit:
                    return JobPage(tuple(found), position)
            if self.budget is not None and examined >= self.budget:
                return JobPage(tuple(found), position)
        return JobPage(tuple(found), None)

    async def alist_jobs(self, query: JobQuery) -> JobPage:
        return self.list_jobs(query)

    def describe(self, job_id: str) -> JobDetail | None:
        self._check()
        info = self.jobs.get(job_id)
        if info is None:
            return None
        step_error = info.error
        return JobDetail(
            info=info,
            payload={"pages": 2},
            attempts=(
                AttemptRecord(1, info.status.value, info.started_at, info.finished_at, info.error),
            ),
            steps=(
                StepRecord(
                    "page-0", "run", StepOutcome.SUCCEEDED, info.created_at, info.created_at
                ),
                StepRecord(
                    "page-1",
                    "run",
                    StepOutcome.FAILED,
                    info.created_at,
                    info.finished_at,
                    step_error,
                ),
            ),
            retries=self.retries.get(job_id, 0),
        )

    async def adescribe(self, job_id: str) -> JobDetail | None:
        return self.describe(job_id)

    def retry(self, job_id: str, *, from_scratch: bool = False) -> JobInfo:
        self._check()
        info = self.jobs.get(job_id)
        if info is None:
            raise JobNotFoundError(job_id)
        if info.status not in RETRYABLE_STATUSES:
            raise JobNotRetryableError(job_id, info.status.value)
        self.retries[job_id] = self.retries.get(job_id, 0) + 1
        self.jobs[job_id] = replace(info, status=JobStatus.QUEUED, attempts=0, finished_at=None)
        return self.jobs[job_id]

    async def aretry(self, job_id: str, *, from_scratch: bool = False) -> JobInfo:
        return self.retry(job_id, from_scratch=from_scratch)

    def purge(self, queue: str, status: JobStatus) -> int:
        self._check()
        gone = [i.job_id for i in self.jobs.values() if i.queue == queue and i.status == status]
        for job_id in gone:
            del self.jobs[job_id]
        return len(gone)

    async def apurge(self, queue: str, status: JobStatus) -> int:
        return self.purge(queue, status)

    # -- the Engine protocol --------------------------------------------------------------

    def enqueue(self, request: JobRequest) -> bool:
        raise NotImplementedError  # nothing is dispatched to it

    def get(self, job_id: str) -> JobInfo | None:
        self._check()
        return self.jobs.get(job_id)

    def cancel(self, job_id: str) -> bool:
        self._check()
        info = self.jobs.get(job_id)
        if info is None:
            raise JobNotFoundError(job_id)
        if info.status.is_terminal:
            return False
        self.jobs[job_id] = replace(info, status=JobStatus.CANCELLED, finished_at=T0)
        return True


class EnginesDispatcher(Dispatcher):
    """A dispatcher whose route is the given engines, in order."""

    def __init__(self, *engines: EngineBase) -> None:
        super().__init__()
        self._engines = {engine.name: engine for engine in engines}  # type: ignore[misc]

    def _route(self) -> Iterator[tuple[str, str]]:
        for name in self._engines:
            yield name, name


def lacking(engine: FakeEngine, capability: str) -> FakeEngine:
    """`engine`, no longer declaring `capability` (e.g. "supports_retry")."""
    engine.__class__ = type(f"Without_{capability}", (FakeEngine,), {capability: False})
    return engine
