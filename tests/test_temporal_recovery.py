"""The Temporal engine's operator capabilities on a real dev server and worker: listing
through visibility with jobkit's search attributes, a job in full from its history, retry
from the failed step (a counter in each step), purge, and a server that does not know
the search attributes.

Visibility is eventually consistent: a listing is polled until it shows what the test
waits for.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest

from jobkit.errors import (
    ConfigurationError,
    JobNotFoundError,
    JobNotRetryableError,
    PayloadTooLargeError,
)
from jobkit_dispatch import dispatch_job
from jobkit_dispatch.conformance._files import count
from jobkit_dispatch.engines.recovery import JobQuery, ListPosition, StepOutcome
from jobkit_dispatch.testing import replay_temporal_history, use_engine, wait_for_job
from jobkit_dispatch.testing.temporal_server import TemporalDevServer
from jobkit_engine import JobError, JobInfo, JobStatus
from tests import temporal_recovery_jobs as jobs

pytest.importorskip("temporalio")

from temporalio.api.history.v1 import HistoryEvent

from jobkit_dispatch.engines.temporal import TemporalEngine, _listing, register_command
from jobkit_dispatch.engines.temporal._model import ATTEMPT_LOG_LIMIT, JobState

T = TypeVar("T")
QUEUES = [jobs.QUEUE, jobs.LIST_QUEUE, jobs.PURGE_QUEUE]


@pytest.fixture(scope="module")
def engine(jobkit_temporal_server: TemporalDevServer) -> Iterator[TemporalEngine]:
    engine = TemporalEngine(
        jobkit_temporal_server.address, task_queue_prefix="recovery-", sleep_threshold=0.5
    )
    with engine.start_worker(QUEUES), use_engine(engine):
        yield engine
    engine.close()


def _polled(read: Callable[[], T], until: Callable[[T], bool], timeout: float = 15.0) -> T:
    """`read()` again until `until` holds for what it returns (visibility lags a little)."""
    deadline = time.monotonic() + timeout
    value = read()
    while not until(value):
        if time.monotonic() > deadline:
            raise TimeoutError(f"still {value!r} after {timeout}s")
        time.sleep(0.05)
        value = read()
    return value


def _all_pages(engine: TemporalEngine, query: JobQuery) -> tuple[list[JobInfo], int]:
    """Every job of `query`, page after page through the cursor; and how many pages."""
    found: list[JobInfo] = []
    pages = 0
    while True:
        page = engine.list_jobs(query)
        pages += 1
        found += page.jobs
        if page.frontier is None:
            return found, pages
        query = replace(query, after=ListPosition.decode(page.frontier.encode()))


def _ran(workdir: Path) -> dict[str, int]:
    return {step: count(str(workdir), step) for step in ("reserve", "charge", "notify")}


# -- list ----------------------------------------------------------------------------------


def test_jobs_are_listed_newest_first_with_filters_and_a_cursor(
    engine: TemporalEngine, tmp_path: Path
) -> None:
    work = jobs.Work(workdir=str(tmp_path))
    (tmp_path / jobs.BROKEN).touch()
    ended = []
    for n in range(5):
        job_id = dispatch_job(jobs.quick, work.model_copy(update={"label": str(n)})).job_id
        ended.append(wait_for_job(job_id))
    ended.append(wait_for_job(dispatch_job(jobs.fails, work).job_id))
    scheduled = dispatch_job(jobs.quick, work, delay=timedelta(hours=1)).job_id
    assert [info.status for info in ended] == ["succeeded"] * 5 + ["failed"]

    in_queue = JobQuery(queue=jobs.LIST_QUEUE, limit=2)
    listed, pages = _polled(lambda: _all_pages(engine, in_queue), lambda found: len(found[0]) == 7)
    assert pages >= 4  # 7 jobs, 2 a page
    newest_first = [scheduled] + [info.job_id for info in reversed(ended)]
    assert [info.job_id for info in listed] == newest_first
    assert listed[0].status == JobStatus.SCHEDULED  # open jobs first
    assert listed == sorted(listed, key=ListPosition.of)
    assert listed[1].error is not None and listed[1].error.message == "the card was declined"
    assert listed[2].result == "4"  # as get_job reports it

    only_failed = JobQuery(queue=jobs.LIST_QUEUE, status=JobStatus.FAILED)
    failed = engine.list_jobs(only_failed)
    assert [info.job_id for info in failed.jobs] == [ended[-1].job_id]
    assert asyncio.run(engine.alist_jobs(only_failed)) == failed  # the async twin
    named = engine.list_jobs(JobQuery(queue=jobs.LIST_QUEUE, job_name="recovery.quick"))
    assert [info.job_id for info in named.jobs] == newest_first[:1] + newest_first[2:]
    waiting = engine.list_jobs(
        JobQuery(queue=jobs.LIST_QUEUE, status=JobStatus.SCHEDULED, job_name="recovery.quick")
    )
    assert [info.job_id for info in waiting.jobs] == [scheduled]
    # A window on the time the order uses: the finish of ended jobs.
    window = JobQuery(
        queue=jobs.LIST_QUEUE,
        status=JobStatus.SUCCEEDED,
        since=ended[2].finished_at,
        until=ended[4].finished_at,
    )
    assert [info.job_id for info in engine.list_jobs(window).jobs] == [
        ended[3].job_id,
        ended[2].job_id,
    ]
    assert engine.cancel(scheduled)


def test_open_jobs_are_listed_by_creation_a_retried_one_too(
    engine: TemporalEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_listing, "MIN_BUDGET", 2)  # a page reads 2 runs: windows narrow
    work = {"workdir": "", "label": "x"}
    first = dispatch_job(jobs.waits, work).job_id  # no worker: it stays queued
    assert engine.cancel(first)
    assert wait_for_job(first).status == JobStatus.CANCELLED
    later = [dispatch_job(jobs.waits, work).job_id for _ in range(2)]
    engine.retry(first)  # its new run starts after the later jobs' runs
    queued = JobQuery(queue=jobs.IDLE_QUEUE, status=JobStatus.QUEUED, limit=1)
    try:
        listed, pages = _polled(lambda: _all_pages(engine, queued), lambda r: len(r[0]) == 3)
        assert [info.job_id for info in listed] == [later[1], later[0], first]
        assert pages >= 3
    finally:
        for job_id in [first, *later]:
            engine.cancel(job_id)


# -- describe and retry ----------------------------------------------------------------------


@pytest.fixture
def failed_order(engine: TemporalEngine, tmp_path: Path) -> JobInfo:
    """An order whose charge step failed: reserve and both sleeps had completed."""
    (tmp_path / jobs.BROKEN).touch()
    info = wait_for_job(dispatch_job(jobs.order, jobs.Work(workdir=str(tmp_path))).job_id)
    assert info.status == JobStatus.FAILED and _ran(tmp_path) == {
        "reserve": 1,
        "charge": 1,
        "notify": 0,
    }
    (tmp_path / jobs.BROKEN).unlink()  # the fix
    return info


def test_describe_shows_the_steps_the_error_and_the_job_name(
    engine: TemporalEngine, failed_order: JobInfo
) -> None:
    detail = engine.describe(failed_order.job_id)
    assert detail is not None and detail.info == failed_order
    steps = {step.step_id: step for step in detail.steps}
    assert list(steps) == ["reserve", "settle", "cool-down", "charge"]
    assert [step.kind for step in detail.steps] == ["run", "sleep", "sleep", "run"]
    assert [step.outcome for step in detail.steps] == [StepOutcome.SUCCEEDED] * 3 + [
        StepOutcome.FAILED
    ]
    cool_down = steps["cool-down"]
    assert cool_down.started_at and cool_down.finished_at
    assert cool_down.finished_at - cool_down.started_at >= timedelta(seconds=0.55)
    error = steps["charge"].error
    assert error is not None and (error.type, error.message) == (
        "ValueError",
        "the card was declined",
    )
    assert error.traceback and 'raise ValueError("the card was declined")' in error.traceback
    [attempt] = detail.attempts
    assert (attempt.number, attempt.outcome) == (1, "failed")
    assert attempt.error is not None and "the card was declined" in (attempt.error.traceback or "")
    assert detail.payload == {"workdir": detail.payload["workdir"], "label": ""}
    assert detail.retries == 0
    # What the Temporal UI shows of a `jobkit.job` run: its summary and search attributes.
    assert detail.extra["summary"] == "recovery.order"
    assert detail.extra["search_attributes"]["JobkitJobName"] == "recovery.order"
    assert detail.extra["search_attributes"]["JobkitQueue"] == jobs.QUEUE
    assert engine.describe("no-such-job") is None
    assert asyncio.run(engine.adescribe(failed_order.job_id)) == detail  # the async twin


def test_a_retry_resumes_at_the_failed_step(
    engine: TemporalEngine, failed_order: JobInfo, tmp_path: Path
) -> None:
    job_id = failed_order.job_id
    retried = engine.retry(job_id)
    assert retried.status in (JobStatus.QUEUED, JobStatus.RUNNING)
    info = wait_for_job(job_id)
    assert info.status == JobStatus.SUCCEEDED and info.result == [1, "charged", 1]
    assert _ran(tmp_path) == {"reserve": 1, "charge": 2, "notify": 1}
    assert info.created_at == failed_order.created_at and info.attempts == 1

    detail = engine.describe(job_id)
    assert detail is not None and detail.retries == 1
    assert [(a.number, a.outcome) for a in detail.attempts] == [(1, "failed"), (1, "succeeded")]
    assert [step.step_id for step in detail.steps] == [
        "reserve",
        "settle",
        "cool-down",
        "charge",
        "notify",
    ]
    assert all(step.outcome == StepOutcome.SUCCEEDED for step in detail.steps)
    # The sleeps were over: the new run set no timer for them.
    events = engine._loop.run(_history(engine, job_id), 10)
    timers = [
        e.user_metadata.summary.data for e in events if e.HasField("timer_started_event_attributes")
    ]
    assert not [summary for summary in timers if b"settle" in summary or b"cool-down" in summary]
    # One job, its latest run: the earlier failed run is not listed.
    listed = _polled(
        lambda: engine.list_jobs(JobQuery(queue=jobs.QUEUE, limit=100)).jobs,
        lambda found: any(i.job_id == job_id and i.status == "succeeded" for i in found),
    )
    assert [i.status for i in listed if i.job_id == job_id] == [JobStatus.SUCCEEDED]
    with pytest.raises(JobNotRetryableError):
        engine.retry(job_id)  # it succeeded


async def _history(engine: TemporalEngine, job_id: str) -> list[HistoryEvent]:
    client = await engine.client()
    return list((await client.get_workflow_handle(job_id).fetch_history()).events)


def test_a_retry_from_scratch_runs_every_step_again(
    engine: TemporalEngine, failed_order: JobInfo, tmp_path: Path
) -> None:
    engine.retry(failed_order.job_id, from_scratch=True)
    info = wait_for_job(failed_order.job_id)
    assert info.status == JobStatus.SUCCEEDED and info.result == [2, "charged", 1]
    assert _ran(tmp_path) == {"reserve": 2, "charge": 2, "notify": 1}


def test_results_too_large_for_a_retry_leave_a_retry_from_scratch(
    engine: TemporalEngine, tmp_path: Path
) -> None:
    (tmp_path / jobs.BROKEN).touch()
    job_id = dispatch_job(jobs.bulky, jobs.Work(workdir=str(tmp_path))).job_id
    assert wait_for_job(job_id).status == JobStatus.FAILED
    (tmp_path / jobs.BROKEN).unlink()
    # The completed steps' results would travel in the new run's input: over 2 MB.
    with pytest.raises(PayloadTooLargeError, match="2 completed steps"):
        engine.retry(job_id)
    engine.retry(job_id, from_scratch=True)
    assert wait_for_job(job_id).result == "charged"


def test_only_failed_or_cancelled_jobs_are_retried(engine: TemporalEngine) -> None:
    with pytest.raises(JobNotFoundError):
        engine.retry("no-such-job")
    waiting = dispatch_job(jobs.quick, {"workdir": "", "label": "x"}, delay=timedelta(hours=1))
    with pytest.raises(JobNotRetryableError, match="scheduled"):
        engine.retry(waiting.job_id)
    assert engine.cancel(waiting.job_id)
    assert wait_for_job(waiting.job_id).status == JobStatus.CANCELLED
    engine.retry(waiting.job_id)  # a cancelled job runs again, now
    assert wait_for_job(waiting.job_id).status == JobStatus.SUCCEEDED


# -- purge ---------------------------------------------------------------------------------


def test_purge_deletes_a_queues_jobs_of_one_status(engine: TemporalEngine, tmp_path: Path) -> None:
    work = {"workdir": str(tmp_path)}
    (tmp_path / jobs.BROKEN).touch()
    done = [
        wait_for_job(dispatch_job(jobs.purged, {**work, "label": str(n)}).job_id) for n in range(2)
    ]
    failed = wait_for_job(dispatch_job(jobs.purged, {**work, "label": "fail"}).job_id)
    retried = wait_for_job(dispatch_job(jobs.purged, {**work, "label": "fail"}).job_id)
    (tmp_path / jobs.BROKEN).unlink()
    engine.retry(retried.job_id)  # two runs: both go
    assert wait_for_job(retried.job_id).status == JobStatus.SUCCEEDED
    succeeded = [info.job_id for info in done] + [retried.job_id]
    in_queue = JobQuery(queue=jobs.PURGE_QUEUE)
    _polled(lambda: engine.list_jobs(in_queue).jobs, lambda found: len(found) == 4)

    assert engine.purge(jobs.PURGE_QUEUE, JobStatus.SUCCEEDED) == 3
    assert [engine.get(job_id) for job_id in succeeded] == [None] * 3  # gone at once
    assert [info.job_id for info in engine.list_jobs(in_queue).jobs] == [failed.job_id]
    assert engine.purge(jobs.PURGE_QUEUE, JobStatus.FAILED) == 1
    assert engine.get(failed.job_id) is None
    with pytest.raises(ValueError, match="ended"):
        engine.purge(jobs.PURGE_QUEUE, JobStatus.RUNNING)


# -- a server without jobkit's search attributes ---------------------------------------------


def test_a_server_without_the_search_attributes_still_runs_jobs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with TemporalDevServer(search_attributes=False) as server:
        engine = TemporalEngine(server.address, task_queue_prefix="bare-")
        try:
            with engine.start_worker([jobs.LIST_QUEUE]), use_engine(engine):
                with caplog.at_level(logging.WARNING, logger="jobkit.temporal"):
                    first = dispatch_job(jobs.quick, {"workdir": "", "label": "a"}).job_id
                    assert wait_for_job(first).status == "succeeded"
                    second = dispatch_job(jobs.quick, {"workdir": "", "label": "b"}).job_id
                    assert wait_for_job(second).status == "succeeded"
                [warning] = [r.getMessage() for r in caplog.records if "search" in r.getMessage()]
                assert register_command() in warning
                by_queue = JobQuery(queue=jobs.LIST_QUEUE)
                listed = _polled(lambda: engine.list_jobs(by_queue).jobs, lambda f: len(f) == 2)
                assert [info.job_id for info in listed] == [second, first]
                with pytest.raises(ConfigurationError, match="search-attribute create"):
                    engine.list_jobs(JobQuery(job_name="recovery.quick"))
            # The command the warning names registers them all: jobs are listed by name.
            command = [*shlex.split(register_command()), "--address", server.address]
            subprocess.run(command, check=True, capture_output=True, env=_cli_env(tmp_path))
            named = TemporalEngine(server.address, task_queue_prefix="bare-")
            with named.start_worker([jobs.LIST_QUEUE]), use_engine(named):
                third = dispatch_job(jobs.quick, {"workdir": "", "label": "c"}).job_id
                assert wait_for_job(third).status == "succeeded"
                by_name = JobQuery(job_name="recovery.quick")
                listed = _polled(lambda: named.list_jobs(by_name).jobs, lambda f: len(f) == 1)
                assert [info.job_id for info in listed] == [third]
            named.close()
        finally:
            engine.close()


def _cli_env(home: Path) -> dict[str, str]:
    """The temporal CLI from this interpreter's environment, writing its files in `home`."""
    return {
        **os.environ,
        "HOME": str(home),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }


def test_jobkit_dev_and_the_fixtures_register_the_search_attributes() -> None:
    command = TemporalDevServer().command("temporal")
    for name in ("JobkitJobName", "JobkitQueue", "JobkitCreatedAt"):
        assert f"{name}=Keyword" in command
    assert "--search-attribute" not in TemporalDevServer(search_attributes=False).command("t")


# -- jobs in flight across an upgrade ----------------------------------------------------

# A run of `recovery.upgrade` (a retried attempt, a short and a long sleep, progress),
# recorded with jobkit as of commit 0511bf5, before the attempt log and the sleeps' summaries.
RECORDED = Path(__file__).parent / "data" / "temporal_history_0511bf5.json"


def test_a_job_recorded_before_the_attempt_log_replays() -> None:
    """A job in flight when workers are upgraded replays its history with the new code:
    the attempt log changes what the memo holds and the summaries what timers carry, never
    which commands the workflow issues."""
    replay_temporal_history(
        RECORDED, job_id="a2811c93dc834d248800a91fb8aff4b0", modules=[jobs.__name__]
    )


# -- the memo ------------------------------------------------------------------------------


def test_the_attempt_log_keeps_the_memo_small() -> None:
    state = JobState(job_name="j", queue="q", status=JobStatus.RUNNING)
    now = datetime.now(UTC)
    for number in range(1, 30):
        state.attempt_began(number, now)
        state.attempt_ended("retrying", now, JobError("ValueError", "x" * 10_000, "t" * 10_000))
    assert [entry.number for entry in state.attempt_log] == list(range(20, 30))
    assert len(state.attempt_log) == ATTEMPT_LOG_LIMIT
    assert [entry.error and entry.error.traceback for entry in state.attempt_log].count(None) == 8
    assert len(json.dumps(state.memo())) < 8_000  # beside the last error and the progress
