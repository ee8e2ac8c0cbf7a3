"""What an operator does to jobs after the fact: read one in full, retry, purge.

Each call goes to the engines of the dispatcher's route (or the one named) that declare
the capability (`engines/recovery.py`); the listing itself is in `_listing.py`. Calls
about one job find it by id wherever it is, as `get_job` does; calls about many report
per engine, and name an engine that was down instead of raising for it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from jobkit.errors import (
    EngineUnavailableError,
    JobkitError,
    JobNotFoundError,
)
from jobkit_dispatch._dispatch import Dispatcher, aget_dispatcher, get_dispatcher
from jobkit_dispatch._listing import (
    JobList,
    alist_jobs,
    ask_engines,
    engine_failure,
    list_jobs,
    operated_engines,
)
from jobkit_dispatch.engines import Engine
from jobkit_dispatch.engines.base import has_capability
from jobkit_dispatch.engines.recovery import (
    PURGEABLE_STATUSES,
    RETRYABLE_STATUSES,
    JobDetail,
)
from jobkit_engine import JobInfo, JobStatus

# Jobs asked of the engines per page while a bulk retry walks the listing.
BULK_PAGE_SIZE = 200


# -- one job ------------------------------------------------------------------------------


def _describe(dispatcher: Dispatcher, job_id: str) -> JobDetail:
    """The first engine's full record of the job. An engine that cannot describe reports
    what `get` knows (a detail with no attempts or steps); one that is down is skipped,
    and its error raised if no other engine has the job."""
    unavailable: EngineUnavailableError | None = None
    for engine in dispatcher._known_engines():
        try:
            detail = _detail_on(engine, job_id)
        except EngineUnavailableError as exc:
            unavailable = unavailable or exc
            continue
        if detail is not None:
            return replace(detail, info=dispatcher._decoded(detail.info))
    raise unavailable or JobNotFoundError(job_id)


def _detail_on(engine: Engine, job_id: str) -> JobDetail | None:
    if has_capability(engine, "supports_listing"):
        return engine.describe(job_id)  # type: ignore[attr-defined,no-any-return]
    info = engine.get(job_id)
    return None if info is None else JobDetail(info=info)


def describe_job(job_id: str) -> JobDetail:
    """Everything known about one job: its `JobInfo`, payload, every attempt with its
    error, the steps with their times and outcome, and how often it was retried.

    Raises `JobNotFoundError` when no engine knows the id, `EngineUnavailableError` when
    an engine that might have it did not answer.
    """
    return _describe(get_dispatcher(), job_id)


async def adescribe_job(job_id: str) -> JobDetail:
    return await asyncio.to_thread(_describe, await aget_dispatcher(), job_id)


def _retrying(engine: Engine) -> Engine:
    if not has_capability(engine, "supports_retry"):
        raise EngineUnavailableError(
            f"{engine.name} cannot retry jobs (supports_retry is not declared)"
        )
    return engine


def retry_job(job_id: str, *, from_scratch: bool = False) -> JobInfo:
    """Run a failed or cancelled job again under its id, from the step that failed: its
    completed steps are not run again (`from_scratch=True` runs them all). It gets a
    fresh round of attempts under the job's retry policy. Returns its new state.

    Raises `JobNotFoundError`, `JobNotRetryableError` (the job is not failed or
    cancelled), `EngineUnavailableError` (its engine is down or cannot retry).
    """
    dispatcher = get_dispatcher()
    engine = _retrying(dispatcher._locate(job_id)[0])
    info = engine.retry(job_id, from_scratch=from_scratch)  # type: ignore[attr-defined]
    return dispatcher._decoded(info)


async def aretry_job(job_id: str, *, from_scratch: bool = False) -> JobInfo:
    dispatcher = await aget_dispatcher()
    engine = _retrying((await asyncio.to_thread(dispatcher._locate, job_id))[0])
    info = await engine.aretry(job_id, from_scratch=from_scratch)  # type: ignore[attr-defined]
    return dispatcher._decoded(info)


# -- many jobs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PurgeResult:
    """`purged`: engine name → how many jobs it deleted; `unavailable`: engine name → why
    it purged nothing (down, or it cannot purge)."""

    purged: dict[str, int] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.purged.values())


def _purgeable(status: JobStatus | str) -> JobStatus:
    value = JobStatus(status)
    if value not in PURGEABLE_STATUSES:
        ended = ", ".join(sorted(PURGEABLE_STATUSES))
        raise ValueError(f"only ended jobs can be purged ({ended}), not {value} ones")
    return value


def purge_jobs(queue: str, status: JobStatus | str, *, engine: str | None = None) -> PurgeResult:
    """Delete every job of `queue` that ended with `status` (succeeded, failed or
    cancelled) on each engine of the route that can purge (or `engine` alone), before
    their retention runs out; their memory is freed at once.

    Raises `ValueError` for a status that is not an ended one.
    """
    wanted = _purgeable(status)
    engines, unavailable = operated_engines(get_dispatcher(), engine, "supports_purge", "purge")
    purged: dict[str, int] = {}
    for each in engines:
        try:
            purged[each.name] = each.purge(queue, wanted)  # type: ignore[attr-defined]
        except JobkitError as exc:
            unavailable[each.name] = engine_failure(exc)
    return PurgeResult(purged, unavailable)


async def apurge_jobs(
    queue: str, status: JobStatus | str, *, engine: str | None = None
) -> PurgeResult:
    wanted = _purgeable(status)
    dispatcher = await aget_dispatcher()
    engines, unavailable = await asyncio.to_thread(
        operated_engines, dispatcher, engine, "supports_purge", "purge"
    )
    purged: dict[str, int] = await ask_engines(
        engines,
        lambda each: each.apurge(queue, wanted),  # type: ignore[attr-defined]
        unavailable,
    )
    return PurgeResult(purged, unavailable)


@dataclass(frozen=True)
class RetryReport:
    """What a bulk retry found and did.

    `jobs`: every job that matched, as listed before the retry; `retried`: engine name →
    how many of them were queued again (none on a dry run, or when not confirmed);
    `failures`: job id → why its retry failed (it changed meanwhile, or its engine went
    down); `unavailable`: engine name → why its jobs were not listed. `dry_run`: nothing
    was retried.
    """

    jobs: tuple[JobInfo, ...] = ()
    retried: dict[str, int] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    dry_run: bool = False

    @property
    def matched(self) -> dict[str, int]:
        """Engine name → how many jobs matched there."""
        return dict(Counter(info.engine for info in self.jobs))


Confirm = Callable[[RetryReport], bool]


def _retryable(status: JobStatus | str) -> JobStatus:
    value = JobStatus(status)
    if value not in RETRYABLE_STATUSES:
        raise ValueError(f"only failed or cancelled jobs can be retried, not {value} ones")
    return value


# What one job of a bulk retry may meet (not found or not retryable any more, unreadable,
# its engine down) is reported for that job, and the others go on.
_RETRY_ERRORS = JobkitError


class _Bulk:
    """A bulk retry: the jobs found page by page, then what became of each."""

    def __init__(self) -> None:
        self.jobs: dict[str, JobInfo] = {}
        self.unavailable: dict[str, str] = {}
        self.cursor: str | None = None
        self.retried: Counter[str] = Counter()
        self.failures: dict[str, str] = {}

    def add(self, page: JobList) -> bool:
        """Take a page in; True while there are more pages to walk."""
        for info in page.jobs:
            self.jobs.setdefault(info.job_id, info)
        for name, cause in page.unavailable.items():
            self.unavailable.setdefault(name, cause)
        advanced = page.cursor is not None and page.cursor != self.cursor
        self.cursor = page.cursor
        return advanced

    def goes_on(self, dry_run: bool, confirm: Confirm | None) -> bool:
        """Whether to retry what was found: not on a dry run, nor unless confirmed."""
        return not dry_run and (confirm is None or confirm(self.report(dry_run=True)))

    def settled(self, info: JobInfo, error: Exception | None) -> None:
        if error is None:
            self.retried[info.engine] += 1
        else:
            self.failures[info.job_id] = str(error)

    def report(self, *, dry_run: bool = False) -> RetryReport:
        return RetryReport(
            tuple(self.jobs.values()),
            dict(self.retried),
            dict(self.failures),
            dict(self.unavailable),
            dry_run,
        )


def retry_jobs(
    *,
    status: JobStatus | str = JobStatus.FAILED,
    queue: str | None = None,
    name: str | None = None,
    engine: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    from_scratch: bool = False,
    dry_run: bool = False,
    confirm: Confirm | None = None,
) -> RetryReport:
    """Retry every job that matches, as `retry_job` does each: all failed (or, with
    `status="cancelled"`, cancelled) jobs of a queue, a job name, an engine or a window
    (the filters of `list_jobs`), e.g. once the bug that failed them is fixed.

    The matching jobs are listed first, every page; `dry_run=True` stops there. Else
    `confirm`, when given, is called with that report (`report.jobs`) and nothing is
    retried unless it returns True; then exactly those jobs are retried. A job that
    cannot be retried is named in `failures`, not raised.
    """
    filters: dict[str, Any] = dict(
        status=_retryable(status), queue=queue, name=name, engine=engine, since=since, until=until
    )
    bulk = _Bulk()
    while bulk.add(list_jobs(**filters, limit=BULK_PAGE_SIZE, cursor=bulk.cursor)):
        pass
    if not bulk.goes_on(dry_run, confirm):
        return bulk.report(dry_run=True)
    engines, _ = operated_engines(get_dispatcher(), engine, "supports_retry", "retry jobs")
    by_name = {each.name: each for each in engines}
    for info in bulk.jobs.values():
        try:
            _retrying_on(by_name, info).retry(info.job_id, from_scratch=from_scratch)  # type: ignore[attr-defined]
        except _RETRY_ERRORS as exc:
            bulk.settled(info, exc)
        else:
            bulk.settled(info, None)
    return bulk.report()


def _retrying_on(engines: dict[str, Engine], info: JobInfo) -> Engine:
    engine = engines.get(info.engine)
    if engine is None:
        raise EngineUnavailableError(f"{info.engine} cannot retry jobs")
    return engine


async def aretry_jobs(
    *,
    status: JobStatus | str = JobStatus.FAILED,
    queue: str | None = None,
    name: str | None = None,
    engine: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    from_scratch: bool = False,
    dry_run: bool = False,
    confirm: Confirm | None = None,
) -> RetryReport:
    """`retry_jobs` for async code (`confirm` is a plain function, called on the loop)."""
    filters: dict[str, Any] = dict(
        status=_retryable(status), queue=queue, name=name, engine=engine, since=since, until=until
    )
    bulk = _Bulk()
    while bulk.add(await alist_jobs(**filters, limit=BULK_PAGE_SIZE, cursor=bulk.cursor)):
        pass
    if not bulk.goes_on(dry_run, confirm):
        return bulk.report(dry_run=True)
    dispatcher = await aget_dispatcher()
    engines, _ = await asyncio.to_thread(
        operated_engines, dispatcher, engine, "supports_retry", "retry jobs"
    )
    by_name = {each.name: each for each in engines}
    for info in bulk.jobs.values():
        try:
            await _retrying_on(by_name, info).aretry(info.job_id, from_scratch=from_scratch)  # type: ignore[attr-defined]
        except _RETRY_ERRORS as exc:
            bulk.settled(info, exc)
        else:
            bulk.settled(info, None)
    return bulk.report()
