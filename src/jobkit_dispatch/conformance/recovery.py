"""The operator capabilities in the conformance suite: list jobs, read one in full, retry
from the failed step, purge (`jobkit_dispatch.engines.recovery`).

Each test runs for an engine that declares the capability it tests (`supports_listing`,
`supports_retry`, `supports_purge`) and is skipped, with the reason, for one that does not.
The engine is asked directly, as the operator tools ask it.

An engine under test may hold the jobs of earlier tests (a server shared by the suite), so
a listing test lists `since` its own start and compares only the jobs it made. Listings
may lag behind the jobs (Temporal's visibility is eventually consistent): a test polls
them, with the harness's deadline, until its jobs show as they ended.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

import pytest

from jobkit.errors import JobNotFoundError, JobNotRetryableError
from jobkit_dispatch import Dispatched, cancel_job, dispatch_job, get_job
from jobkit_dispatch.conformance import jobs
from jobkit_dispatch.conformance import recovery_jobs as rj
from jobkit_dispatch.conformance._files import count, open_gate
from jobkit_dispatch.conformance.harness import Harness, requires
from jobkit_dispatch.engines.base import has_capability
from jobkit_dispatch.engines.recovery import (
    OPEN_STATUSES,
    JobPage,
    JobQuery,
    ListPosition,
    StepOutcome,
)
from jobkit_engine import JobInfo, JobStatus

T = TypeVar("T")
SUCCEEDED, FAILED, CANCELLED = JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED
MAX_PAGES = 100  # a walk that needs more for a test's jobs never ends


def _eventually(harness: Harness, what: str, probe: Callable[[], T], ok: Callable[[T], bool]) -> T:
    """`probe()` once `ok` holds for it, polled until the harness's deadline."""
    deadline = time.monotonic() + harness.timeout
    while not ok(value := probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still not so after {harness.timeout}s: {value!r}")
        time.sleep(0.05)
    return value


def _walk(list_page: Callable[[JobQuery], JobPage], query: JobQuery) -> list[JobInfo]:
    """Every job `query` lists, page after page from each frontier; every page keeps the
    contract: at most `limit` jobs, in the listing order, after the cursor, up to the
    frontier, and the frontier moves on."""
    rows: list[JobInfo] = []
    after = query.after
    for _ in range(MAX_PAGES):
        page = list_page(replace(query, after=after))
        assert len(page.jobs) <= query.limit, f"{len(page.jobs)} jobs over limit={query.limit}"
        positions = [ListPosition.of(info) for info in page.jobs]
        assert positions == sorted(positions), "a page is in the listing order"
        assert after is None or all(after < p for p in positions), "a job before the cursor"
        rows.extend(page.jobs)
        if page.frontier is None:
            return rows
        assert all(p <= page.frontier for p in positions), "a job beyond the frontier"
        assert after is None or after < page.frontier, "the frontier did not move on"
        after = page.frontier
    raise AssertionError(f"the listing did not end within {MAX_PAGES} pages")


def _statuses(rows: list[JobInfo], mine: dict[str, JobStatus]) -> dict[str, JobStatus]:
    return {info.job_id: info.status for info in rows if info.job_id in mine}


def _listing(harness: Harness, query: JobQuery, mine: dict[str, JobStatus]) -> list[JobInfo]:
    """Every job `query` lists, once the jobs of `mine` show in it with their statuses."""
    return _eventually(
        harness,
        f"the listing shows {mine}",
        lambda: _walk(harness.engine.list_jobs, query),
        lambda rows: _statuses(rows, mine) == mine,
    )


def _shows(
    harness: Harness,
    list_page: Callable[[JobQuery], JobPage],
    query: JobQuery,
    made: _History,
    expected: list[str] | None = None,
) -> list[str]:
    """The ids `query` lists, once the test's jobs among them are `expected` (all of them
    by default), in that order."""
    expected = made.newest_first if expected is None else expected
    return _eventually(
        harness,
        f"{query} lists {expected}",
        lambda: [info.job_id for info in _walk(list_page, query)],
        lambda ids: [i for i in ids if i in made.statuses] == expected,
    )


def _running(harness: Harness, workdir: str, gate: str) -> Dispatched:
    """A job that runs, holding the conformance queue's one slot, until `gate` opens."""
    d = dispatch_job(jobs.gated, {"workdir": workdir, "gate": gate})
    harness.wait(d.job_id, lambda info: info.status == JobStatus.RUNNING)
    return d


def _ended(harness: Harness, d: Dispatched, status: JobStatus) -> str:
    info = harness.wait(d.job_id)
    assert info.status == status, info
    return d.job_id


@dataclass
class _History:
    """A test's jobs, newest first in the listing order, with their statuses and names."""

    newest_first: list[str] = field(default_factory=list)
    statuses: dict[str, JobStatus] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)

    def add(self, job_id: str, status: JobStatus, name: str) -> None:
        self.newest_first.insert(0, job_id)
        self.statuses[job_id] = status
        self.names[job_id] = name


@contextmanager
def _history(harness: Harness, workdir: str) -> Iterator[_History]:
    """Six jobs, each later in time than the one before: five that ended (succeeded,
    failed, cancelled; three job names), then one that runs until the test is over.

    `a` is created before `b` but ends after it: the listing orders ended jobs by the
    time they finished, not by the time they were created.
    """
    made = _History()
    harness.tick()
    e1 = _ended(harness, dispatch_job(jobs.echo, {"text": "e1"}), SUCCEEDED)
    made.add(e1, SUCCEEDED, jobs.echo.name)
    harness.tick()
    f1 = _ended(harness, dispatch_job(jobs.fatal, {"workdir": workdir}), FAILED)
    made.add(f1, FAILED, jobs.fatal.name)
    harness.tick()
    a = _running(harness, workdir, "a")
    harness.tick()
    b = dispatch_job(jobs.echo, {"text": "b"})
    try:
        assert cancel_job(b.job_id) is True
        made.add(_ended(harness, b, CANCELLED), CANCELLED, jobs.echo.name)
        harness.tick()
    finally:
        open_gate(workdir, "a")
    made.add(_ended(harness, a, SUCCEEDED), SUCCEEDED, jobs.gated.name)
    harness.tick()
    f2 = _ended(harness, dispatch_job(jobs.fatal, {"workdir": workdir}), FAILED)
    made.add(f2, FAILED, jobs.fatal.name)
    harness.tick()
    running = _running(harness, workdir, "open")
    made.add(running.job_id, JobStatus.RUNNING, jobs.gated.name)
    try:
        yield made
    finally:
        open_gate(workdir, "open")
        harness.wait(running.job_id)


def _fixable_failed(harness: Harness, workdir: str) -> JobInfo:
    """`conformance.fixable`, failed in its step b: a ran once, b once, c never."""
    info = harness.wait(dispatch_job(rj.fixable, {"workdir": workdir}).job_id)
    assert info.status == FAILED, info
    assert info.error is not None and info.error.type == "ConnectionError", info.error
    assert _tallies(workdir) == (1, 1, 0)
    return info


def _tallies(workdir: str) -> tuple[int, int, int]:
    return (count(workdir, "fixable-a"), count(workdir, "fixable-b"), count(workdir, "fixable-c"))


class RecoveryConformance:
    """Listing, describe, retry and purge, for every engine that declares them."""

    # -- listing -------------------------------------------------------------------------

    def test_listing_is_newest_first_and_a_cursor_walks_it(
        self, harness: Harness, workdir: str
    ) -> None:
        requires(harness, "supports_listing")
        engine, start = harness.engine, harness.now()
        with _history(harness, workdir) as made:
            rows = _listing(harness, JobQuery(since=start), made.statuses)
            mine = [info for info in rows if info.job_id in made.statuses]
            assert [info.job_id for info in mine] == made.newest_first, "open first, then by end"
            for info in mine:  # a row is the job as get_job reports it
                assert (info.engine, info.queue) == (engine.name, jobs.QUEUE), info
                assert info.job_name == made.names[info.job_id], info
                if info.status == FAILED:  # the error is in the list, not only in describe
                    assert info.error is not None and info.error.type == "Rejected", info
            walked = _shows(harness, engine.list_jobs, JobQuery(since=start, limit=2), made)
            assert len(walked) == len(set(walked)), f"a job listed twice: {walked}"
            _shows(harness, _sync(engine.alist_jobs), JobQuery(since=start), made)

    def test_listing_filters(self, harness: Harness, workdir: str) -> None:
        requires(harness, "supports_listing")
        engine, start = harness.engine, harness.now()
        with _history(harness, workdir) as made:
            rows = _listing(harness, JobQuery(since=start), made.statuses)
            o, f2, a, b, f1, e1 = made.newest_first
            at = {info.job_id: ListPosition.of(info).at for info in rows}

            def between(newer: str, older: str) -> datetime:
                return at[older] + (at[newer] - at[older]) / 2

            def listed(expected: list[str], **filters: Any) -> None:
                query = JobQuery(**{"since": start, **filters})
                _shows(harness, engine.list_jobs, query, made, expected)

            listed([f2, f1], status=FAILED)
            listed([b], status=CANCELLED)
            listed([o], status=JobStatus.RUNNING)
            listed([b, e1], job_name=jobs.echo.name)
            listed([a], job_name=jobs.gated.name, status=SUCCEEDED)
            listed(made.newest_first, queue=jobs.QUEUE)
            listed([o, f2, a, b], since=between(b, f1))
            listed([b, f1, e1], until=between(a, b))
            listed([a, b], since=between(b, f1), until=between(f2, a))
            # Nothing matches: an empty listing, not an error.
            assert _walk(engine.list_jobs, JobQuery(queue="no-such-queue")) == []
            assert _walk(engine.list_jobs, JobQuery(since=start + timedelta(days=365))) == []

    # -- describe ------------------------------------------------------------------------

    def test_describe_shows_the_failed_step_and_every_attempt(
        self, harness: Harness, workdir: str
    ) -> None:
        requires(harness, "supports_listing")
        engine = harness.engine
        job_id = _ended(harness, dispatch_job(rj.broken_step, {"workdir": workdir}), FAILED)
        detail = engine.describe(job_id)
        assert detail is not None
        assert (detail.info.job_id, detail.info.status, detail.info.attempts) == (job_id, FAILED, 2)
        assert (detail.info.job_name, detail.payload, detail.retries) == (
            rj.broken_step.name,
            {"workdir": workdir},
            0,
        )
        first, second = detail.steps
        assert (first.step_id, first.kind, first.outcome) == ("first", "run", StepOutcome.SUCCEEDED)
        assert (second.step_id, second.kind, second.outcome) == (
            "second",
            "run",
            StepOutcome.FAILED,
        )
        assert first.started_at and first.finished_at and second.started_at
        assert first.started_at <= first.finished_at <= second.started_at
        error = second.error
        assert error is not None
        assert (error.type, error.message) == ("SecondStepBroke", "the second step is broken")
        assert error.traceback and rj.RAISE_LINE in error.traceback, error.traceback
        assert [attempt.number for attempt in detail.attempts] == [1, 2]
        assert detail.attempts[0].outcome in ("failed", "retrying")
        assert detail.attempts[1].outcome == "failed"
        for attempt in detail.attempts:
            assert attempt.error is not None and attempt.error.type == "SecondStepBroke"
            assert attempt.started_at and attempt.finished_at
            assert attempt.started_at <= attempt.finished_at
        created, finished = detail.info.created_at, detail.info.finished_at
        assert created and finished
        assert created <= detail.attempts[0].started_at <= finished
        assert (count(workdir, "broken-first"), count(workdir, "broken-second")) == (1, 2)
        assert _sync(engine.adescribe)(job_id) == detail

    def test_describe_shows_a_sleep_and_no_unknown_job(
        self, harness: Harness, workdir: str
    ) -> None:
        requires(harness, "supports_listing")
        engine = harness.engine
        assert engine.describe("no-such-job") is None
        assert _sync(engine.adescribe)("no-such-job") is None
        nap = harness.short_sleep
        d = dispatch_job(jobs.sleeper, {"workdir": workdir, "seconds": nap.total_seconds()})
        _ended(harness, d, SUCCEEDED)
        steps = engine.describe(d.job_id).steps
        assert [(s.step_id, s.kind, s.outcome) for s in steps] == [
            ("before", "run", StepOutcome.SUCCEEDED),
            ("nap", "sleep", StepOutcome.SUCCEEDED),
            ("after", "run", StepOutcome.SUCCEEDED),
        ]
        slept = steps[1]
        assert slept.started_at and slept.finished_at  # a sleep's end is when it woke
        assert abs(slept.finished_at - slept.started_at - nap) < timedelta(seconds=1)

    # -- retry ---------------------------------------------------------------------------

    def test_retry_resumes_at_the_failed_step(self, harness: Harness, workdir: str) -> None:
        requires(harness, "supports_retry")
        engine = harness.engine
        failed = _fixable_failed(harness, workdir)
        open_gate(workdir, rj.FIX)
        again = engine.retry(failed.job_id)
        assert again.job_id == failed.job_id
        assert again.status in OPEN_STATUSES, "a retried job is open again"
        info = harness.wait(failed.job_id)
        assert (info.status, info.result) == (SUCCEEDED, {"steps": "abc", "attempt": 1})
        assert info.attempts == 1, "a retry is a fresh round of attempts"
        assert _tallies(workdir) == (1, 2, 1), "a ran once, b again, c once"
        if has_capability(engine, "supports_listing"):
            detail = engine.describe(failed.job_id)
            assert detail.retries == 1
            assert [(a.number, a.outcome) for a in detail.attempts] == [
                (1, "failed"),
                (1, "succeeded"),
            ]
            assert detail.attempts[0].error and detail.attempts[0].error.type == "ConnectionError"
            assert [(s.step_id, s.outcome) for s in detail.steps] == [
                ("a", StepOutcome.SUCCEEDED),
                ("b", StepOutcome.SUCCEEDED),
                ("c", StepOutcome.SUCCEEDED),
            ]
            assert detail.info.created_at == failed.created_at

    def test_retry_from_scratch_runs_every_step(self, harness: Harness, workdir: str) -> None:
        requires(harness, "supports_retry")
        failed = _fixable_failed(harness, workdir)
        open_gate(workdir, rj.FIX)
        _sync(harness.engine.aretry)(failed.job_id, from_scratch=True)
        info = harness.wait(failed.job_id)
        assert (info.status, info.result) == (SUCCEEDED, {"steps": "abc", "attempt": 1})
        assert _tallies(workdir) == (2, 2, 1)

    def test_retry_only_a_failed_or_cancelled_job(self, harness: Harness, workdir: str) -> None:
        requires(harness, "supports_retry")
        engine = harness.engine
        with pytest.raises(JobNotFoundError):
            engine.retry("no-such-job")
        blocker = _running(harness, workdir, "held")
        queued = dispatch_job(jobs.echo, {"text": "again", "workdir": workdir})
        try:
            assert get_job(queued.job_id).status == JobStatus.QUEUED
            for d, status in ((queued, JobStatus.QUEUED), (blocker, JobStatus.RUNNING)):
                with pytest.raises(JobNotRetryableError) as refused:
                    engine.retry(d.job_id)
                assert (refused.value.job_id, refused.value.status) == (d.job_id, status)
            assert cancel_job(queued.job_id) is True
            _ended(harness, queued, CANCELLED)
        finally:
            open_gate(workdir, "held")
        _ended(harness, blocker, SUCCEEDED)
        with pytest.raises(JobNotRetryableError):
            engine.retry(blocker.job_id)  # it would run its side effects again
        engine.retry(queued.job_id)
        info = harness.wait(queued.job_id)
        assert (info.status, info.result.text) == (SUCCEEDED, "again")
        assert count(workdir, "echo") == 1

    # -- purge ---------------------------------------------------------------------------

    def test_purge_deletes_the_ended_jobs_of_a_status(self, harness: Harness, workdir: str) -> None:
        requires(harness, "supports_purge")
        engine, start = harness.engine, harness.now()
        done = [_ended(harness, dispatch_job(jobs.echo, {"text": t}), SUCCEEDED) for t in "xy"]
        failed = _ended(harness, dispatch_job(jobs.fatal, {"workdir": workdir}), FAILED)
        listing = has_capability(engine, "supports_listing")
        everything = {**dict.fromkeys(done, SUCCEEDED), failed: FAILED}
        if listing:  # listed first, as an operator would see them
            _listing(harness, JobQuery(since=start), everything)
        assert engine.purge(jobs.QUEUE, SUCCEEDED) >= len(done)
        _eventually(harness, "purged jobs are gone", lambda: [engine.get(i) for i in done], _none)
        assert engine.get(failed).status == FAILED
        if listing:
            _eventually(
                harness,
                "purged jobs are no longer listed",
                lambda: _statuses(_walk(engine.list_jobs, JobQuery(since=start)), everything),
                lambda listed: listed == {failed: FAILED},
            )
        assert _sync(engine.apurge)(jobs.QUEUE, FAILED) >= 1
        _eventually(harness, "the failed job is gone", lambda: [engine.get(failed)], _none)


def _none(values: list[Any]) -> bool:
    return all(value is None for value in values)


def _sync(method: Callable[..., Any]) -> Callable[..., Any]:
    """An async twin called from this synchronous test: its answer must be the sync one's."""
    return lambda *args, **kwargs: asyncio.run(method(*args, **kwargs))
