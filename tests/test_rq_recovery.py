"""The RQ engine's operator capabilities against a real redis-server and real workers: list
(newest first, filters, a cursor, a bounded page), describe, retry from the failed step,
purge. Fast checks of the scripts alone are in test_rq_recovery_scripts.py."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import redis

from jobkit import JobkitSettings
from jobkit.connection import get_redis
from jobkit.errors import JobNotFoundError, JobNotRetryableError
from jobkit.queues import default_queues
from jobkit_dispatch import Dispatcher
from jobkit_dispatch.conformance._files import count, open_gate
from jobkit_dispatch.engines.base import has_capability
from jobkit_dispatch.engines.recovery import (
    JobQuery,
    ListPosition,
    ListsJobs,
    PurgesJobs,
    RetriesJobs,
    StepOutcome,
)
from jobkit_dispatch.engines.rq import RQEngine
from jobkit_dispatch.engines.rq.listing import SCAN_FACTOR, SCAN_SLACK
from jobkit_dispatch.testing import RedisServer
from jobkit_dispatch.testing.rq_worker import WorkerProcess
from jobkit_engine import JobInfo, JobStatus
from tests import rq_recovery_jobs as jobs
from tests.waiting import eventually

WORKER_ENV = {"JOBKIT_WORKER_HEARTBEAT": "0.5", "JOBKIT_SLEEP_THRESHOLD": "1"}
MODULES = ["tests.rq_recovery_jobs"]


@dataclass
class Stack:
    server: RedisServer
    engine: RQEngine
    dispatcher: Dispatcher
    client: redis.Redis

    def wait_all(self, job_ids: list[str], timeout: float = 30.0) -> None:
        eventually(lambda: all(self.info(j).is_terminal for j in job_ids), timeout)

    def info(self, job_id: str) -> JobInfo:
        info = self.engine.get(job_id)
        assert info is not None
        return info

    def commands(self) -> dict[str, int]:
        return {k: v["calls"] for k, v in self.client.info("commandstats").items()}


def _stack(server: RedisServer) -> Stack:
    settings = JobkitSettings(redis_url=server.url)
    engine = RQEngine(get_redis(settings=settings), settings=settings)
    client = redis.Redis.from_url(server.url)
    return Stack(server, engine, Dispatcher(engine, settings=settings), client)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A Redis of this module's own (listing sees every job in it) and a worker."""
    log = Path(tmp_path_factory.mktemp("worker")) / "worker.log"
    queues = [jobs.QUEUE, jobs.OTHER_QUEUE, jobs.PURGE_QUEUE]
    with (
        RedisServer() as server,
        WorkerProcess(server.url, queues, MODULES, env=WORKER_ENV, log_path=log),
    ):
        yield _stack(server)


@pytest.fixture(scope="module")
def sized(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """50 ended jobs on one queue and 5,000 on another (a third failed, two job names),
    every worker stopped: nothing but the test talks to this Redis."""
    log = Path(tmp_path_factory.mktemp("worker")) / "worker.log"
    with RedisServer() as server:
        s = _stack(server)
        with WorkerProcess(
            server.url, [jobs.SMALL_QUEUE, jobs.BIG_QUEUE], MODULES, env=WORKER_ENV, log_path=log
        ):
            for queue, n in ((jobs.SMALL_QUEUE, 50), (jobs.BIG_QUEUE, 5000)):
                for i in range(n):
                    job = jobs.noop if i % 2 else jobs.other
                    s.dispatcher.dispatch(job, {"fail": i % 3 == 0}, queue=queue)
            eventually(lambda: _ended(s, jobs.SMALL_QUEUE) == 50, 60)
            eventually(lambda: _ended(s, jobs.BIG_QUEUE) == 5000, 60)
        yield s


def _ended(s: Stack, queue: str) -> int:
    return sum(s.client.zcard(f"rq:{r}:{queue}") for r in ("finished", "failed", "canceled"))


def walk(engine: RQEngine, query: JobQuery) -> list[JobInfo]:
    """Every page of `query`, following the cursor; each page within its limit."""
    seen: list[JobInfo] = []
    while True:
        page = engine.list_jobs(query)
        assert len(page.jobs) <= query.limit
        seen += page.jobs
        if page.frontier is None:
            return seen
        assert all(not page.frontier < ListPosition.of(info) for info in page.jobs)
        query = JobQuery(**{**query.__dict__, "after": page.frontier})


def everything(s: Stack) -> list[JobInfo]:
    """Every job in Redis, read one by one: what a listing must agree with."""
    found = (s.engine.get(k.decode()[len("rq:job:") :]) for k in s.client.scan_iter("rq:job:*"))
    return [info for info in found if info is not None]


def expected(infos: list[JobInfo], query: JobQuery) -> list[str]:
    return [i.job_id for i in sorted(filter(query.matches, infos), key=ListPosition.of)]


def test_the_engine_declares_and_implements_the_capabilities(stack: Stack) -> None:
    for flag in ("supports_listing", "supports_retry", "supports_purge"):
        assert has_capability(stack.engine, flag)
    for protocol in (ListsJobs, RetriesJobs, PurgesJobs):
        assert isinstance(stack.engine, protocol)


def test_listing_newest_first_with_each_filter(stack: Stack, tmp_path: Path) -> None:
    """Jobs in every state on three queues; each query's pages, followed to the end, are
    exactly the matching jobs in the listing order (open first, newest first)."""
    d, wd = stack.dispatcher, str(tmp_path)
    ended = [d.dispatch(jobs.noop, {"fail": i % 3 == 0}).job_id for i in range(12)]
    ended += [d.dispatch(jobs.other, {"fail": i % 2 == 0}).job_id for i in range(6)]
    ended += [d.dispatch(jobs.elsewhere, {"fail": i % 2 == 1}).job_id for i in range(6)]
    cancelled = d.dispatch(jobs.noop, {}, delay=timedelta(hours=1)).job_id
    stack.engine.cancel(cancelled)
    stack.wait_all(ended)
    for i in range(5):
        d.dispatch(jobs.noop, {}, queue=jobs.IDLE_QUEUE)  # queued: nobody serves it
        d.dispatch(jobs.other, {}, delay=timedelta(hours=i + 1))  # scheduled
    sleeping = d.dispatch(jobs.sleeper, {}).job_id
    running = d.dispatch(jobs.gated, {"workdir": wd, "gate": "listing"}).job_id
    eventually(lambda: stack.info(sleeping).status == JobStatus.SLEEPING)
    eventually(lambda: stack.info(running).status == JobStatus.RUNNING)
    try:
        infos = everything(stack)
        by_id = {i.job_id: i for i in infos}
        middle = sorted(ListPosition.of(i).at for i in infos if i.is_terminal)
        queries = [JobQuery(limit=7)]
        queries += [JobQuery(status=status, limit=3) for status in JobStatus]
        queries += [
            JobQuery(job_name="rqrecovery.other", limit=4),
            JobQuery(queue=jobs.OTHER_QUEUE, limit=4),
            JobQuery(queue=jobs.QUEUE, status=JobStatus.FAILED, job_name="rqrecovery.noop"),
            JobQuery(since=middle[5], until=middle[15], limit=4),
        ]
        for query in queries:
            listed = walk(stack.engine, query)
            assert [i.job_id for i in listed] == expected(infos, query), query
            assert listed == [by_id[i.job_id] for i in listed]  # each row as get_job reads it
        assert {i.status for i in walk(stack.engine, JobQuery())} == set(JobStatus)
    finally:
        open_gate(wd, "listing")
    stack.wait_all([running])


@pytest.mark.slow
def test_a_page_costs_the_same_redis_commands_whatever_the_queue_holds(sized: Stack) -> None:
    """Commands inside the scripts count (INFO commandstats): a page of 20 costs as much
    over 5,000 ended jobs as over 50, and a filtered page stays within its budget."""

    def cost(query: JobQuery) -> tuple[int, int]:
        sized.client.config_resetstat()
        page = sized.engine.list_jobs(query)
        calls = sized.commands()
        calls.pop("cmdstat_config|resetstat", None)
        calls.pop("cmdstat_info", None)  # this very read
        return len(page.jobs), sum(calls.values())

    sized.engine.list_jobs(JobQuery(queue=jobs.SMALL_QUEUE))  # the script is loaded
    small = cost(JobQuery(queue=jobs.SMALL_QUEUE, limit=20))
    big = cost(JobQuery(queue=jobs.BIG_QUEUE, limit=20))
    assert small == big
    assert small[0] == 20 and small[1] <= 20 + 5  # a read per job, the index walks, the call
    budget = 20 * SCAN_FACTOR + SCAN_SLACK
    for query in (
        JobQuery(queue=jobs.BIG_QUEUE, job_name="rqrecovery.other", limit=20),
        JobQuery(queue=jobs.BIG_QUEUE, status=JobStatus.FAILED, limit=20),
        JobQuery(job_name="no.such.job", limit=20),
    ):
        _, commands = cost(query)
        queues = 1 if query.queue else len(list(default_queues))
        assert commands <= queues * (budget + 5), query


@pytest.mark.slow
def test_a_cursor_walks_every_job_once(sized: Stack) -> None:
    infos = everything(sized)
    for query in (
        JobQuery(queue=jobs.BIG_QUEUE, limit=100),
        JobQuery(status=JobStatus.FAILED, limit=37),
        JobQuery(job_name="rqrecovery.noop", limit=250),
    ):
        listed = [i.job_id for i in walk(sized.engine, query)]
        assert len(listed) == len(set(listed))
        assert listed == expected(infos, query)


def _steps_job(stack: Stack, workdir: Path) -> str:
    """The three-step job, failed at its second step (twice: it has two attempts)."""
    (workdir / "broken").touch()
    job_id = stack.dispatcher.dispatch(jobs.steps, {"workdir": str(workdir)}).job_id
    stack.wait_all([job_id])
    assert stack.info(job_id).status == JobStatus.FAILED
    return job_id


def _counts(workdir: Path) -> dict[str, int]:
    return {name: count(str(workdir), name) for name in ("first", "second", "third")}


def test_describe_shows_the_steps_and_the_error_with_its_traceback(
    stack: Stack, tmp_path: Path
) -> None:
    job_id = _steps_job(stack, tmp_path)
    detail = stack.engine.describe(job_id)
    assert detail is not None and detail.info == stack.info(job_id)
    assert detail.payload == {"workdir": str(tmp_path)}
    assert detail.retries == 0
    assert [(a.number, a.outcome) for a in detail.attempts] == [(1, "retrying"), (2, "failed")]
    for attempt in detail.attempts:
        assert attempt.error is not None and attempt.error.type == "BrokenError"
        assert attempt.started_at and attempt.finished_at
        assert attempt.started_at <= attempt.finished_at
    steps = [(s.step_id, s.kind, s.outcome) for s in detail.steps]
    assert steps == [
        ("first", "run", StepOutcome.SUCCEEDED),
        ("nap", "sleep", StepOutcome.SUCCEEDED),
        ("second", "run", StepOutcome.FAILED),
    ]
    first, nap, second = detail.steps
    assert first.started_at and first.finished_at and first.started_at <= first.finished_at
    assert nap.started_at and nap.finished_at and nap.finished_at > nap.started_at
    assert second.error is not None and second.error.type == "BrokenError"
    assert second.error.traceback and "in fragile" in second.error.traceback
    assert 'raise BrokenError("the second step is broken")' in second.error.traceback
    assert stack.engine.describe("no-such-job") is None


def test_describe_a_running_job(stack: Stack, tmp_path: Path) -> None:
    job_id = stack.dispatcher.dispatch(jobs.gated, {"workdir": str(tmp_path), "gate": "g"}).job_id
    eventually(lambda: stack.info(job_id).status == JobStatus.RUNNING)
    try:
        eventually(lambda: bool(stack.engine.describe(job_id).steps))  # type: ignore[union-attr]
        detail = stack.engine.describe(job_id)
        assert detail is not None
        assert [(a.number, a.outcome) for a in detail.attempts] == [(1, "running")]
        assert [(s.step_id, s.outcome) for s in detail.steps] == [("wait", StepOutcome.RUNNING)]
    finally:
        open_gate(str(tmp_path), "g")
    stack.wait_all([job_id])


def test_a_retry_runs_only_the_failed_step_and_those_after_it(stack: Stack, tmp_path: Path) -> None:
    job_id = _steps_job(stack, tmp_path)
    assert _counts(tmp_path) == {"first": 1, "second": 2, "third": 0}
    (tmp_path / "broken").unlink()  # the bug is fixed
    info = stack.engine.retry(job_id)
    assert (info.status, info.attempts, info.error) == (JobStatus.QUEUED, 0, None)
    stack.wait_all([job_id])
    after = stack.info(job_id)
    assert after.status == JobStatus.SUCCEEDED
    assert after.result == ["first", "second", "third"]
    assert _counts(tmp_path) == {"first": 1, "second": 3, "third": 1}
    detail = stack.engine.describe(job_id)
    assert detail is not None and detail.retries == 1
    outcomes = [(a.number, a.outcome) for a in detail.attempts]
    assert outcomes == [(1, "retrying"), (2, "failed"), (1, "succeeded")]
    assert [(s.step_id, s.outcome) for s in detail.steps] == [
        ("first", StepOutcome.SUCCEEDED),
        ("nap", StepOutcome.SUCCEEDED),
        ("second", StepOutcome.SUCCEEDED),
        ("third", StepOutcome.SUCCEEDED),
    ]
    assert detail.info.created_at == stack.info(job_id).created_at


def test_a_retry_from_scratch_runs_every_step(stack: Stack, tmp_path: Path) -> None:
    job_id = _steps_job(stack, tmp_path)
    (tmp_path / "broken").unlink()
    stack.engine.retry(job_id, from_scratch=True)
    stack.wait_all([job_id])
    assert stack.info(job_id).status == JobStatus.SUCCEEDED
    assert _counts(tmp_path) == {"first": 2, "second": 3, "third": 1}


def test_a_retried_cancelled_job_is_listed_open_and_runs(stack: Stack, tmp_path: Path) -> None:
    job_id = stack.dispatcher.dispatch(
        jobs.steps, {"workdir": str(tmp_path)}, delay=timedelta(hours=1)
    ).job_id
    assert stack.engine.cancel(job_id) is True
    cancelled = walk(stack.engine, JobQuery(status=JobStatus.CANCELLED))
    assert job_id in {i.job_id for i in cancelled}
    stack.engine.retry(job_id)
    listed = stack.engine.list_jobs(JobQuery(queue=jobs.QUEUE, limit=500)).jobs
    mine = next(i for i in listed if i.job_id == job_id)
    assert not mine.is_terminal  # an open job again, among the open jobs
    assert job_id not in {
        i.job_id for i in walk(stack.engine, JobQuery(status=JobStatus.CANCELLED))
    }
    stack.wait_all([job_id])
    assert stack.info(job_id).status == JobStatus.SUCCEEDED
    assert _counts(tmp_path) == {"first": 1, "second": 1, "third": 1}


def test_only_failed_or_cancelled_jobs_can_be_retried(stack: Stack) -> None:
    done = stack.dispatcher.dispatch(jobs.noop, {}).job_id
    waiting = stack.dispatcher.dispatch(jobs.noop, {}, delay=timedelta(hours=1)).job_id
    stack.wait_all([done])
    for job_id, status in ((done, "succeeded"), (waiting, "scheduled")):
        with pytest.raises(JobNotRetryableError) as caught:
            stack.engine.retry(job_id)
        assert caught.value.status == status
    with pytest.raises(JobNotFoundError):
        stack.engine.retry("no-such-job")
    stack.engine.fence("moved-away", "temporal", "fallback")  # a marker: no job of RQ's
    with pytest.raises(JobNotFoundError):
        stack.engine.retry("moved-away")
    assert stack.engine.describe("moved-away") is None
    with pytest.raises(ValueError, match="only ended jobs"):
        stack.engine.purge(jobs.QUEUE, JobStatus.QUEUED)
    stack.engine.cancel(waiting)


def test_purge_deletes_a_queues_jobs_of_one_status(stack: Stack) -> None:
    d = stack.dispatcher
    ids = [
        d.dispatch(jobs.noop, {"fail": i % 2 == 0}, queue=jobs.PURGE_QUEUE).job_id
        for i in range(40)
    ]
    stack.wait_all(ids)
    failed = [j for j in ids if stack.info(j).status == JobStatus.FAILED]
    assert len(failed) == 20
    assert stack.engine.purge(jobs.PURGE_QUEUE, JobStatus.FAILED) == 20
    assert all(stack.engine.get(j) is None for j in failed)
    assert walk(stack.engine, JobQuery(queue=jobs.PURGE_QUEUE, status=JobStatus.FAILED)) == []
    assert len(walk(stack.engine, JobQuery(queue=jobs.PURGE_QUEUE))) == 20  # the others stay
    assert stack.client.zcard(f"rq:failed:{jobs.PURGE_QUEUE}") == 0
    assert stack.engine.purge(jobs.PURGE_QUEUE, JobStatus.FAILED) == 0
    assert stack.engine.purge(jobs.PURGE_QUEUE, JobStatus.SUCCEEDED) == 20
    assert walk(stack.engine, JobQuery(queue=jobs.PURGE_QUEUE)) == []


def test_a_succeeded_jobs_record_stays_compact(stack: Stack) -> None:
    """What describe needs costs a succeeded job no large field: Redis keeps its hash as a
    listpack (about 900 bytes for a no-op job, against 2,500 as a hashtable)."""
    job_id = stack.dispatcher.dispatch(jobs.noop, {}).job_id
    stack.wait_all([job_id])
    assert stack.client.object("encoding", f"rq:job:{job_id}") == b"listpack"
