"""What an engine may offer operators: list jobs, read one in full, retry, purge.

Each is an optional capability, declared like the others (`supports_listing`,
`supports_retry`, `supports_purge` on the engine) and implemented through the Protocol
beside it; the conformance suite tests every engine that declares one, and the operator
tools (`jobkit list / show / retry / purge`) skip, with a note, an engine that does not.

**Order.** Every engine lists in one order, so that the operator tools can merge the
pages of several engines: open jobs first (queued, scheduled, running, sleeping), newest
created first; then finished ones, most recently finished first; ties broken by job id,
descending. `ListPosition` is a place in that order: `JobQuery.after` asks for the jobs
strictly after it. A page is bounded in work per engine (never a scan of a whole queue):
an engine that examined its budget of jobs before it found `limit` matches returns what
it found and the position it reached (`JobPage.frontier`), and is asked again from there.

**Retry** gives a failed or cancelled job a fresh round of attempts under its own id
(`ctx.attempt` starts again at 1): its completed steps stay memoised, so it resumes at
the step that failed; `from_scratch=True` forgets them.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import total_ordering
from typing import Any, Protocol, runtime_checkable

from jobkit_engine import JobError, JobInfo, JobStatus

OPEN_STATUSES = frozenset(
    {JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.RUNNING, JobStatus.SLEEPING}
)
RETRYABLE_STATUSES = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})
PURGEABLE_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


@total_ordering
@dataclass(frozen=True)
class ListPosition:
    """A place in the listing order; `a < b` when `a` is listed before `b`.

    `finished`: the job has ended (open jobs come first); `at`: when it was created (open)
    or finished (ended), newest first; `job_id`: ties, descending.
    """

    finished: bool
    at: datetime
    job_id: str

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, ListPosition):
            return NotImplemented
        return self._key() < other._key()

    def _key(self) -> tuple[bool, int, _Descending]:
        return (self.finished, -_micros(self.at), _Descending(self.job_id))

    @classmethod
    def of(cls, info: JobInfo) -> ListPosition:
        """Where `info` stands in the order."""
        finished = info.status.is_terminal
        at = info.finished_at if finished else info.created_at
        return cls(finished, at or _EPOCH, info.job_id)

    def encode(self) -> str:
        """An opaque cursor string for scripts and URLs."""
        data = json.dumps([int(self.finished), _micros(self.at), self.job_id])
        return base64.urlsafe_b64encode(data.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, cursor: str) -> ListPosition:
        """The position `encode` wrote. Raises `ValueError` for anything else."""
        try:
            padded = cursor + "=" * (-len(cursor) % 4)
            finished, at, job_id = json.loads(base64.urlsafe_b64decode(padded))
            at = _EPOCH + timedelta(microseconds=int(at))
            return cls(bool(finished), at, str(job_id))
        except (ValueError, TypeError, binascii.Error) as exc:
            raise ValueError(f"not a job list cursor: {cursor!r}") from exc


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(at: datetime) -> int:
    return (at - _EPOCH) // timedelta(microseconds=1)


@dataclass(frozen=True)
class _Descending:
    value: str

    def __lt__(self, other: _Descending) -> bool:
        return self.value > other.value


@dataclass(frozen=True)
class JobQuery:
    """Which jobs to list: every filter that is set must match.

    `since` / `until` bound the time the order uses (created for open jobs, finished for
    ended ones): `since` inclusive, `until` exclusive.
    """

    status: JobStatus | None = None
    queue: str | None = None
    job_name: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    after: ListPosition | None = None
    limit: int = 50

    def matches(self, info: JobInfo) -> bool:
        """Whether `info` passes the filters and lies after `after` (engines that filter in
        memory use it; others translate the query into their own)."""
        if self.status is not None and info.status != self.status:
            return False
        if self.queue is not None and info.queue != self.queue:
            return False
        if self.job_name is not None and info.job_name != self.job_name:
            return False
        position = ListPosition.of(info)
        if self.since is not None and position.at < self.since:
            return False
        if self.until is not None and position.at >= self.until:
            return False
        return self.after is None or self.after < position


@dataclass(frozen=True)
class JobPage:
    """One page of a listing, in the listing order.

    `frontier`: None when the engine has no more matching jobs; else the position to ask
    again from (`JobQuery(after=frontier)`): every matching job up to it is in `jobs`.
    """

    jobs: tuple[JobInfo, ...]
    frontier: ListPosition | None = None


class StepOutcome(StrEnum):
    SUCCEEDED = "succeeded"  # a step.run that returned, or a sleep that is over
    FAILED = "failed"  # its function raised; the attempt failed with it
    RUNNING = "running"  # its function is running now
    SLEEPING = "sleeping"  # a sleep not over yet
    INTERRUPTED = "interrupted"  # began, never ended: cancelled, timed out or worker lost


@dataclass(frozen=True)
class StepRecord:
    """One step of a job's timeline. `kind` is "run" or "sleep"; for a sleep
    `finished_at` is when it wakes (or woke)."""

    step_id: str
    kind: str
    outcome: StepOutcome
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: JobError | None = None


@dataclass(frozen=True)
class AttemptRecord:
    """One attempt: `number` is `ctx.attempt` (a retry starts a new round at 1);
    `outcome` is "succeeded", "failed", "cancelled", "running" or "retrying"."""

    number: int
    outcome: str
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: JobError | None = None


@dataclass(frozen=True)
class JobDetail:
    """Everything an engine knows about one job: `info` as `get_job` reports it, the
    payload as dispatched, every attempt (earlier rounds too, oldest first), the steps in
    the order they first began, and how many times it was retried."""

    info: JobInfo
    payload: Any = None
    attempts: tuple[AttemptRecord, ...] = ()
    steps: tuple[StepRecord, ...] = ()
    retries: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # engine specifics, e.g. run ids


@runtime_checkable
class ListsJobs(Protocol):
    """`supports_listing`: the engine lists its jobs and reads one in full."""

    def list_jobs(self, query: JobQuery) -> JobPage:
        """Jobs matching `query`, in the listing order, at most `query.limit`, with bounded
        work (see the module docstring). Raises `EngineUnavailableError`."""
        ...

    async def alist_jobs(self, query: JobQuery) -> JobPage: ...

    def describe(self, job_id: str) -> JobDetail | None:
        """The job in full, or None when this engine has no job with that id."""
        ...

    async def adescribe(self, job_id: str) -> JobDetail | None: ...


@runtime_checkable
class RetriesJobs(Protocol):
    """`supports_retry`: a failed or cancelled job runs again under its id."""

    def retry(self, job_id: str, *, from_scratch: bool = False) -> JobInfo:
        """Queue the job again (see the module docstring) and return its new state.

        Raises `JobNotFoundError` when this engine has no such job, `JobNotRetryableError`
        when it is not failed or cancelled, `EngineUnavailableError`.
        """
        ...

    async def aretry(self, job_id: str, *, from_scratch: bool = False) -> JobInfo: ...


@runtime_checkable
class PurgesJobs(Protocol):
    """`supports_purge`: ended jobs are deleted before their retention runs out."""

    def purge(self, queue: str, status: JobStatus) -> int:
        """Delete every job of `queue` with the ended `status` (one of
        `PURGEABLE_STATUSES`); returns how many. Raises `EngineUnavailableError`."""
        ...

    async def apurge(self, queue: str, status: JobStatus) -> int: ...
