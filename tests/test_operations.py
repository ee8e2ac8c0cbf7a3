"""The operator API across engines: the merge of pages, and list / describe / retry /
purge over engines that are up, down, or cannot do it (in-memory engines, see
`tests/operator_fakes.py`)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta

import pytest

import tests.jobs
from jobkit.errors import (
    CorruptJobError,
    EngineUnavailableError,
    JobNotFoundError,
    JobNotRetryableError,
)
from jobkit_dispatch import (
    adescribe_job,
    alist_jobs,
    apurge_jobs,
    aretry_job,
    aretry_jobs,
    describe_job,
    list_jobs,
    purge_jobs,
    retry_job,
    retry_jobs,
    set_dispatcher,
)
from jobkit_dispatch._listing import merge_pages
from jobkit_dispatch.engines.recovery import JobPage, ListPosition
from jobkit_engine import JobStatus
from tests.operator_fakes import T0, EnginesDispatcher, FakeEngine, job, lacking

FAILED, SUCCEEDED, QUEUED, RUNNING = (
    JobStatus.FAILED,
    JobStatus.SUCCEEDED,
    JobStatus.QUEUED,
    JobStatus.RUNNING,
)


def _mixed(engine: str, ids: str, start: int) -> list:
    """Jobs with one-letter ids, alternating ended and open, a minute apart."""
    statuses = itertools.cycle([FAILED, SUCCEEDED, QUEUED, FAILED, RUNNING])
    return [job(f"{engine}{c}", start + 2 * n, next(statuses)) for n, c in enumerate(ids)]


@pytest.fixture
def engines() -> Iterator[tuple[FakeEngine, FakeEngine]]:
    a = FakeEngine("a", _mixed("a", "abcdefg", 0), budget=3)
    b = FakeEngine("b", _mixed("b", "abcdefgh", 1), budget=5)
    previous = set_dispatcher(EnginesDispatcher(a, b))
    try:
        yield a, b
    finally:
        set_dispatcher(previous)


def _order(*engines: FakeEngine) -> list[str]:
    every = [info for engine in engines for info in engine.jobs.values()]
    return [info.job_id for info in sorted(every, key=ListPosition.of)]


# -- the merge ----------------------------------------------------------------------------


def test_merge_emits_nothing_past_a_frontier_and_resumes_there() -> None:
    x = [job("x1", 9), job("x2", 5), job("x3", 1)]
    y = [job("y1", 8), job("y2", 2)]
    slow = JobPage((x[0],), frontier=ListPosition.of(x[0]))
    done = JobPage(tuple(y), frontier=None)
    jobs, cursor = merge_pages({"x": slow, "y": done}, limit=10)
    assert [i.job_id for i in jobs] == ["x1"]  # y1 (finished at 8) comes after x1 (at 9)
    assert cursor == ListPosition.of(x[0])


def test_merge_cursor_is_the_last_job_when_the_page_is_full() -> None:
    page = JobPage(tuple(job(f"j{n}", 10 - n) for n in range(4)), frontier=None)
    jobs, cursor = merge_pages({"x": page}, limit=3)
    assert [i.job_id for i in jobs] == ["j0", "j1", "j2"]
    assert cursor == ListPosition.of(jobs[-1])
    everything, end = merge_pages({"x": page}, limit=4)
    assert len(everything) == 4 and end is None


def test_merge_interleaves_open_jobs_first_then_ended_and_shows_an_id_once() -> None:
    open_x = job("o1", 3, QUEUED)
    ended_x = job("e1", 9, FAILED)
    ended_y = job("e2", 7, FAILED)
    jobs, cursor = merge_pages(
        {
            "x": JobPage((open_x, ended_x)),
            "y": JobPage((ended_y, ended_x)),  # the same id on two engines: shown once
        },
        limit=10,
    )
    assert [i.job_id for i in jobs] == ["o1", "e1", "e2"]
    assert cursor is None


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 50])
def test_a_cursor_walk_over_two_engines_lists_every_job_once_in_order(
    engines: tuple[FakeEngine, FakeEngine], limit: int
) -> None:
    seen: list[str] = []
    cursor = None
    for _ in range(100):
        page = list_jobs(limit=limit, cursor=cursor)
        assert len(page.jobs) <= limit and not page.unavailable
        seen += [info.job_id for info in page.jobs]
        if page.cursor is None:
            break
        assert page.cursor != cursor, "the cursor must move on"
        cursor = page.cursor
    assert seen == _order(*engines)  # no duplicate, no gap, one order


def test_a_filtered_walk_with_small_budgets_has_no_gap(
    engines: tuple[FakeEngine, FakeEngine],
) -> None:
    seen, cursor = [], None
    while True:
        page = list_jobs(status="failed", limit=2, cursor=cursor)
        seen += [info.job_id for info in page.jobs]
        if page.cursor is None:
            break
        cursor = page.cursor
    failed = [i for e in engines for i in e.jobs.values() if i.status == FAILED]
    assert seen == [i.job_id for i in sorted(failed, key=ListPosition.of)]
    assert all(engine.pages_asked > 1 for engine in engines)


# -- the API over engines -----------------------------------------------------------------


def test_list_filters_and_says_which_engine_each_job_is_on(
    engines: tuple[FakeEngine, FakeEngine],
) -> None:
    a, _b = engines
    a.jobs["ax"] = job("ax", 30, FAILED, engine="a", name="tests.other", queue="data_sync")
    page = list_jobs(name="tests.other", limit=50)
    assert [(i.job_id, i.engine) for i in page.jobs] == [("ax", "a")]
    assert [i.job_id for i in list_jobs(queue="data_sync").jobs] == ["ax"]
    only_b = list_jobs(engine="b", limit=50)  # a short page: b's budget is 5 jobs
    assert {i.engine for i in only_b.jobs} == {"b"} and len(only_b.jobs) == 5
    window = list_jobs(since=T0 + timedelta(minutes=5), until=T0 + timedelta(minutes=9))
    assert all(
        T0 + timedelta(minutes=5) <= (i.finished_at or i.created_at) < T0 + timedelta(minutes=9)
        for i in window.jobs
    )
    assert window.jobs


def test_an_engine_that_is_down_or_cannot_list_is_reported_and_the_rest_listed(
    engines: tuple[FakeEngine, FakeEngine],
) -> None:
    a, _b = engines
    a.down = "ConnectionError: refused (circuit open)"
    page = list_jobs(limit=50)
    assert page.unavailable == {"a": "ConnectionError: refused (circuit open)"}
    assert {i.engine for i in page.jobs} == {"b"}
    a.down = None
    page = list_jobs(limit=50, engine=lacking(a, "supports_listing").name)
    assert page.jobs == () and "supports_listing is not declared" in page.unavailable["a"]


def test_bad_filters_are_value_errors(engines: tuple[FakeEngine, FakeEngine]) -> None:
    with pytest.raises(ValueError, match="not a job list cursor"):
        list_jobs(cursor="nonsense")
    with pytest.raises(ValueError, match="done"):
        list_jobs(status="done")
    with pytest.raises(ValueError, match="timezone-aware"):
        list_jobs(since=T0.replace(tzinfo=None))
    with pytest.raises(ValueError, match="at least 1"):
        list_jobs(limit=0)


def test_results_are_decoded_as_get_job_decodes_them(
    engines: tuple[FakeEngine, FakeEngine],
) -> None:
    a, _ = engines
    greeted = job("g", 40, SUCCEEDED, engine="a", name="tests.greet")
    a.jobs["g"] = replace(greeted, result={"text": "hi", "thread": "t"})
    listed = list_jobs(name="tests.greet").jobs[0]
    assert isinstance(listed.result, tests.jobs.Greeted)
    assert isinstance(describe_job("g").info.result, tests.jobs.Greeted)


def test_describe_finds_the_job_on_its_engine(engines: tuple[FakeEngine, FakeEngine]) -> None:
    _a, b = engines
    detail = describe_job("ba")
    assert detail.info.engine == "b" and [s.step_id for s in detail.steps] == ["page-0", "page-1"]
    with pytest.raises(JobNotFoundError):
        describe_job("nope")
    b.down = "Temporal did not answer"
    with pytest.raises(EngineUnavailableError, match="did not answer"):
        describe_job("nope")
    assert describe_job("aa").info.engine == "a"  # found before the engine that is down


def test_describe_on_an_engine_that_cannot_describe_reports_what_get_knows(
    engines: tuple[FakeEngine, FakeEngine],
) -> None:
    _, b = engines
    detail = describe_job(lacking(b, "supports_listing").jobs["ba"].job_id)
    assert detail.info == b.jobs["ba"] and detail.steps == () and detail.attempts == ()


def test_retry_one_job(engines: tuple[FakeEngine, FakeEngine]) -> None:
    _, b = engines
    info = retry_job("ba")
    assert (info.status, info.engine, b.retries) == (QUEUED, "b", {"ba": 1})
    with pytest.raises(JobNotRetryableError):
        retry_job("ba")  # queued now
    with pytest.raises(JobNotFoundError):
        retry_job("nope")
    lacking(b, "supports_retry")
    with pytest.raises(EngineUnavailableError, match="supports_retry"):
        retry_job("bd")


def test_bulk_retry_counts_asks_and_retries_exactly_what_it_counted(
    engines: tuple[FakeEngine, FakeEngine],
) -> None:
    a, b = engines
    failed = {i.job_id for e in engines for i in e.jobs.values() if i.status == FAILED}
    dry = retry_jobs(dry_run=True)
    assert dry.dry_run and {i.job_id for i in dry.jobs} == failed and not a.retries
    assert dry.matched == {"a": 3, "b": 3}
    asked: list[int] = []
    declined = retry_jobs(confirm=lambda report: asked.append(len(report.jobs)) or False)
    assert asked == [6] and declined.dry_run and not a.retries and not b.retries
    done = retry_jobs(confirm=lambda report: True)
    assert done.retried == {"a": 3, "b": 3} and not done.failures and not done.dry_run
    assert set(a.retries) | set(b.retries) == failed
    assert retry_jobs().jobs == ()  # nothing failed any more


def test_bulk_retry_filters_and_reports_failures_and_engines_down(
    engines: tuple[FakeEngine, FakeEngine],
) -> None:
    a, b = engines
    b.jobs["bz"] = job("bz", 50, FAILED, engine="b", name="tests.other")
    assert [i.job_id for i in retry_jobs(name="tests.other", dry_run=True).jobs] == ["bz"]

    def engine_goes_down(report: object) -> bool:
        b.down = "gone"
        return True

    report = retry_jobs(engine="b", confirm=engine_goes_down)
    assert set(report.failures) == {i.job_id for i in report.jobs} and not report.retried
    a.down = "refused"
    b.down = None
    partial = retry_jobs(dry_run=True)
    assert partial.unavailable == {"a": "refused"} and {i.engine for i in partial.jobs} == {"b"}
    with pytest.raises(ValueError, match="failed or cancelled"):
        retry_jobs(status="succeeded")


def test_purge_counts_per_engine(engines: tuple[FakeEngine, FakeEngine]) -> None:
    a, b = engines
    a.down = "refused"
    result = purge_jobs("default", "succeeded")
    assert result.purged == {"b": 2} and result.unavailable == {"a": "refused"}
    assert result.total == 2
    assert not [i for i in b.jobs.values() if i.status == SUCCEEDED]
    assert [i for i in b.jobs.values() if i.status == FAILED]
    with pytest.raises(ValueError, match="only ended jobs"):
        purge_jobs("default", "queued")


async def test_the_async_twins_answer_as_the_sync_calls(
    engines: tuple[FakeEngine, FakeEngine],
) -> None:
    _a, b = engines
    assert (await alist_jobs(limit=4)) == list_jobs(limit=4)
    assert (await adescribe_job("ab")) == describe_job("ab")
    dry = await aretry_jobs(dry_run=True)
    assert dry.matched == {"a": 3, "b": 3}
    assert (await aretry_job("ba")).status == QUEUED
    done = await aretry_jobs()
    assert done.retried == {"a": 3, "b": 2}
    b.down = "refused"
    purged = await apurge_jobs("default", "succeeded")
    assert purged.purged == {"a": 2} and "b" in purged.unavailable


def test_a_result_that_no_longer_fits_its_type_is_listed_as_stored(
    engines: tuple[FakeEngine, FakeEngine],
) -> None:
    a, _ = engines
    old = replace(job("g", 40, SUCCEEDED, engine="a", name="tests.greet"), result={"txt": 1})
    a.jobs["g"] = old
    assert list_jobs(name="tests.greet").jobs[0].result == {"txt": 1}


async def test_an_engine_error_other_than_unavailable_is_reported_too(
    engines: tuple[FakeEngine, FakeEngine],
) -> None:
    a, _ = engines

    def unreadable(*args: object) -> None:
        raise CorruptJobError("aa", "field jk_att:1 is not JSON")

    a.list_jobs = a.purge = unreadable  # type: ignore[method-assign]
    cause = "CorruptJobError: job 'aa': field jk_att:1 is not JSON"
    assert list_jobs().unavailable == {"a": cause}
    assert (await alist_jobs()).unavailable == {"a": cause}
    assert purge_jobs("default", "failed").unavailable == {"a": cause}
