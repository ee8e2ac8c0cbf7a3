"""Listing jobs across engines: each engine lists its own, and the pages merge into one.

Every engine lists in the one order of `ListPosition` and returns, with a page, its
frontier: the position up to which it has given every matching job. The merged page may
only hold jobs up to the smallest frontier of the engines that have more, or a job of a
slower engine could later turn up before a job already shown; so a merged page stops
there, and its cursor is the last job shown, or that frontier when fewer than `limit`
jobs lay before it. Walking the cursors thus lists every job once, with no gap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from jobkit.durations import require_aware
from jobkit.errors import ConfigurationError, EngineUnavailableError, JobkitError
from jobkit_dispatch._dispatch import Dispatcher, aget_dispatcher, get_dispatcher
from jobkit_dispatch.engines import Engine
from jobkit_dispatch.engines.base import has_capability
from jobkit_dispatch.engines.recovery import JobPage, JobQuery, ListPosition
from jobkit_engine import JobInfo, JobStatus

T = TypeVar("T")


@dataclass(frozen=True)
class JobList:
    """One page of jobs from every engine asked, in the listing order: open jobs first,
    newest created first, then ended ones, most recently finished first.

    `cursor`: pass it back for the next page; None when there is no more. A page may hold
    fewer than `limit` jobs and still have a cursor (an engine stopped at its work budget).
    `unavailable`: engine name → why it was not listed (it is down, or it cannot list);
    the jobs of the other engines are listed all the same.
    """

    jobs: tuple[JobInfo, ...]
    cursor: str | None = None
    unavailable: dict[str, str] = field(default_factory=dict)


def merge_pages(
    pages: Mapping[str, JobPage], limit: int
) -> tuple[list[JobInfo], ListPosition | None]:
    """The jobs of one merged page and the position to go on from (None: the end).

    Only jobs up to the smallest frontier of the engines that have more are emitted (see
    the module docstring). A job id listed by two engines is shown once.
    """
    bound = min((p.frontier for p in pages.values() if p.frontier is not None), default=None)
    ranked: dict[str, tuple[ListPosition, JobInfo]] = {}
    for page in pages.values():
        for info in page.jobs:
            position = ListPosition.of(info)
            if bound is not None and bound < position:
                continue
            if info.job_id not in ranked or position < ranked[info.job_id][0]:
                ranked[info.job_id] = (position, info)
    ordered = sorted(ranked.values(), key=lambda pair: pair[0])
    emitted = ordered[:limit]
    if len(ordered) > limit or (len(ordered) == limit and bound is not None):
        return [info for _, info in emitted], emitted[-1][0]
    return [info for _, info in emitted], bound


def job_query(
    *,
    status: JobStatus | str | None = None,
    queue: str | None = None,
    name: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> JobQuery:
    """The engines' query for these filters. Raises `ValueError` for a status that is no
    `JobStatus`, a limit below 1, a naive datetime or a cursor `list_jobs` did not write."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    return JobQuery(
        status=None if status is None else JobStatus(status),
        queue=queue,
        job_name=name,
        since=None if since is None else require_aware(since, "since"),
        until=None if until is None else require_aware(until, "until"),
        after=None if cursor is None else ListPosition.decode(cursor),
        limit=limit,
    )


def operated_engines(
    dispatcher: Dispatcher, only: str | None, capability: str, what: str
) -> tuple[list[Engine], dict[str, str]]:
    """The engines an operator call goes to — `only`, else every engine of the route —
    that declare `capability`; and why each other one is left out (engine name → cause).

    An engine of the route that cannot be built (its extra is missing) is left out with
    its error; an `only` engine that cannot be built raises `ConfigurationError`.
    """
    names = [only] if only is not None else [name for name, _ in dispatcher._route()]
    engines: list[Engine] = []
    left_out: dict[str, str] = {}
    for name in names:
        try:
            engine = dispatcher.engine(name)
        except ConfigurationError as exc:
            if only is not None:
                raise
            left_out[name] = str(exc)
            continue
        if has_capability(engine, capability):
            engines.append(engine)
        else:
            left_out[engine.name] = f"cannot {what} ({capability} is not declared)"
    return engines, left_out


def engine_failure(exc: JobkitError) -> str:
    """Why an engine gave no answer, for `unavailable`: an `EngineUnavailableError`'s cause
    as it reads; any other error of jobkit's (a record it cannot read, a setting) with its
    type, so one engine's trouble is reported beside the others' answers, not raised."""
    if isinstance(exc, EngineUnavailableError):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"


async def ask_engines(
    engines: list[Engine],
    call: Callable[[Engine], Awaitable[T]],
    unavailable: dict[str, str],
) -> dict[str, T]:
    """`call(engine)` on every engine at once: the answers by engine name; an engine that
    raised a jobkit error goes into `unavailable` instead, beside the others' answers."""
    answers = await asyncio.gather(*(call(each) for each in engines), return_exceptions=True)
    answered: dict[str, T] = {}
    for each, answer in zip(engines, answers, strict=True):
        if isinstance(answer, JobkitError):
            unavailable[each.name] = engine_failure(answer)
        elif isinstance(answer, BaseException):
            raise answer
        else:
            answered[each.name] = answer
    return answered


def _page(
    dispatcher: Dispatcher, pages: dict[str, JobPage], limit: int
) -> tuple[tuple[JobInfo, ...], str | None]:
    jobs, position = merge_pages(pages, limit)
    cursor = None if position is None else position.encode()
    return tuple(_decoded(dispatcher, info) for info in jobs), cursor


def _decoded(dispatcher: Dispatcher, info: JobInfo) -> JobInfo:
    """The result in its annotated type, as `get_job` gives it; as stored (JSON) when it
    no longer fits that type (the job's code changed since), so that one old job never
    breaks a listing."""
    try:
        return dispatcher._decoded(info)
    except (ValueError, TypeError):
        return info


def list_jobs(
    *,
    status: JobStatus | str | None = None,
    queue: str | None = None,
    name: str | None = None,
    engine: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> JobList:
    """One page of jobs, across every engine of the route that can list (or `engine` alone).

    Filters: `status`, `queue`, job `name`, and a window on the time the order uses —
    created for open jobs, finished for ended ones (`since` inclusive, `until`
    exclusive, aware datetimes). `cursor` is a `JobList.cursor` from the previous page.
    An engine that is down or cannot list is named in `JobList.unavailable`, never
    raised. Raises `ValueError` for a bad filter or cursor, `ConfigurationError` for an
    `engine` that does not exist.
    """
    query = job_query(
        status=status, queue=queue, name=name, since=since, until=until, limit=limit, cursor=cursor
    )
    dispatcher = get_dispatcher()
    engines, unavailable = operated_engines(dispatcher, engine, "supports_listing", "list jobs")
    pages: dict[str, JobPage] = {}
    for each in engines:
        try:
            pages[each.name] = each.list_jobs(query)  # type: ignore[attr-defined]
        except JobkitError as exc:
            unavailable[each.name] = engine_failure(exc)
    jobs, next_cursor = _page(dispatcher, pages, limit)
    return JobList(jobs, next_cursor, unavailable)


async def alist_jobs(
    *,
    status: JobStatus | str | None = None,
    queue: str | None = None,
    name: str | None = None,
    engine: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> JobList:
    """`list_jobs` for async code: the engines are asked at once."""
    query = job_query(
        status=status, queue=queue, name=name, since=since, until=until, limit=limit, cursor=cursor
    )
    dispatcher = await aget_dispatcher()
    # Building an engine may import its client library and connect: not on the loop.
    engines, unavailable = await asyncio.to_thread(
        operated_engines, dispatcher, engine, "supports_listing", "list jobs"
    )
    pages: dict[str, JobPage] = await ask_engines(
        engines,
        lambda each: each.alist_jobs(query),  # type: ignore[attr-defined]
        unavailable,
    )
    jobs, next_cursor = _page(dispatcher, pages, limit)
    return JobList(jobs, next_cursor, unavailable)
