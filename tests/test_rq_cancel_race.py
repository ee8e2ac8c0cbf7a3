"""`cancel_job` on RQ tells the truth under a race: thousands of jobs run by two real
`jobkit worker` processes while two threads cancel them.

True must mean the job ends cancelled and no step of it starts after the cancel: each
step is let start by an atomic check in Redis (BEGIN_STEP), which records when, and none
may be let start after the cancel was accepted (so none after True was returned). False
must mean the job had already finished, and every job ends in a terminal state.

Each step function also notes, as its first act, when it began: a step let start just
before the cancel may begin a moment after True came back (the worker had yet to read the
check's answer). The test prints how many did so, and by how much, beside its counts.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
import redis

from jobkit import JobkitSettings
from jobkit.connection import get_redis
from jobkit_dispatch import cancel_job, dispatch_job
from jobkit_dispatch.engines.rq import RQEngine, keys
from jobkit_dispatch.testing import RedisServer, use_engine
from jobkit_dispatch.testing.rq_worker import WorkerProcess
from tests import rq_race_jobs

JOBS = 3000
TERMINAL = {b"finished", b"failed", b"canceled"}


class Cancels:
    """Cancels each job at most once, and remembers when each answer came back."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tried: set[str] = set()
        self.true_at: dict[str, float] = {}
        self.false_at: dict[str, float] = {}

    def cancel(self, job_id: str) -> None:
        with self._lock:
            if job_id in self._tried:
                return
            self._tried.add(job_id)
        answer = cancel_job(job_id)
        returned = time.time()
        with self._lock:
            (self.true_at if answer else self.false_at)[job_id] = returned


def _cancel_running(client: redis.Redis, cancels: Cancels, done: threading.Event) -> None:
    """Aim at jobs a worker is running right now."""
    running = keys.QueueKeys(rq_race_jobs.RACE_QUEUE).running
    while not done.is_set():
        for job_id in client.zrandmember(running, 1) or []:
            cancels.cancel(job_id.decode())
        time.sleep(0.004)


def _cancel_any(ids: list[str], cancels: Cancels, done: threading.Event) -> None:
    """Aim at any job dispatched so far: queued, running or finished."""
    while not done.is_set():
        if ids:
            cancels.cancel(random.choice(ids))
        time.sleep(0.004)


def _statuses(client: redis.Redis, ids: list[str]) -> list[bytes | None]:
    with client.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hget(keys.job_key(job_id), "status")
        return pipe.execute()


def _wait_until_all_terminal(client: redis.Redis, ids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(s in TERMINAL for s in _statuses(client, ids)):
        if time.monotonic() > deadline:
            return  # the test reports the jobs left behind
        time.sleep(0.2)


@pytest.fixture
def race_engine(jobkit_redis_server: RedisServer) -> Iterator[RQEngine]:
    settings = JobkitSettings(redis_url=jobkit_redis_server.url)
    engine = RQEngine(get_redis(settings=settings), settings=settings)
    with use_engine(engine):
        yield engine


@pytest.mark.slow
def test_a_cancel_that_returned_true_wins_against_running_workers(
    race_engine: RQEngine, jobkit_redis_server: RedisServer, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(jobkit_redis_server.url)
    client.flushdb()
    workdir = str(tmp_path)
    workers = [
        WorkerProcess(
            jobkit_redis_server.url,
            [rq_race_jobs.RACE_QUEUE],
            ["tests.rq_race_jobs"],
            env={"JOBKIT_WORKER_HEARTBEAT": "1"},
            log_path=tmp_path / f"worker-{n}.log",
        )
        for n in range(2)
    ]
    cancels, done, ids = Cancels(), threading.Event(), list[str]()
    threads = [
        threading.Thread(target=_cancel_running, args=(client, cancels, done)),
        threading.Thread(target=_cancel_any, args=(ids, cancels, done)),
    ]
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        for worker in workers:
            stack.enter_context(worker)
        for thread in threads:
            thread.start()
        try:
            for _ in range(JOBS):
                ids.append(dispatch_job(rq_race_jobs.steps, {"workdir": workdir}).job_id)
            _wait_until_all_terminal(client, ids, timeout=60)
        finally:
            done.set()
            for thread in threads:
                thread.join()
        # A cancel issued after the last check may have hit a job still running.
        _wait_until_all_terminal(client, ids, timeout=10)
    elapsed = time.monotonic() - started

    jobs = _read_jobs(client, ids)
    client.close()
    starts = [line.split() for line in Path(workdir, "starts").read_text().splitlines()]
    effects = Path(workdir, "effects").read_text().splitlines()
    true_at, false_at = cancels.true_at, cancels.false_at

    lost = [j for j in ids if jobs[j].status not in TERMINAL]
    true_succeeded = [j for j in true_at if jobs[j].status == b"finished"]
    true_not_cancelled = [j for j in true_at if jobs[j].status != b"canceled"]
    # A step "starts" when BEGIN_STEP lets it (atomically with the cancel, in Redis); its
    # function runs a moment later, in the worker. Every step that ran was let start, and
    # none of a cancelled job's steps was let start after the cancel was accepted.
    unadmitted = [(j, step) for j, step, _ in starts if step not in jobs[j].began]
    late_admissions = [
        (j, step)
        for j in true_at
        for step, began in jobs[j].began.items()
        if jobs[j].cancel_accepted is None or began > jobs[j].cancel_accepted
    ]
    accepted_after_true = [j for j in true_at if (jobs[j].cancel_accepted or 0.0) > true_at[j]]
    ran_after_true = sorted(
        float(at) - true_at[j] for j, _, at in starts if j in true_at and float(at) > true_at[j]
    )
    false_unfinished = [
        j
        for j, at in false_at.items()
        if jobs[j].status != b"finished" or (jobs[j].finished_at or float("inf")) > at
    ]
    while_running = sum(1 for j in true_at if jobs[j].cancel_accepted is not None)
    statuses = [info.status for info in jobs.values()]
    print(
        f"\n{JOBS} jobs, 2 workers, {elapsed:.1f}s: cancel_job returned True {len(true_at)} "
        f"times ({while_running} while running, {len(true_at) - while_running} before), "
        f"False {len(false_at)} times; {statuses.count(b'finished')} succeeded, "
        f"{statuses.count(b'canceled')} cancelled, {statuses.count(b'failed')} failed, "
        f"{len(lost)} lost; {len(starts)} steps ran, {len(effects)} side effects. "
        f"Cancelled with True but succeeded: {len(true_succeeded)}, not cancelled: "
        f"{len(true_not_cancelled)}; steps let start after the cancel was accepted: "
        f"{len(late_admissions)}; step functions that ran without being let start: "
        f"{len(unadmitted)}; step functions whose first line ran after True returned: "
        f"{len(ran_after_true)}, by at most "
        f"{max(ran_after_true, default=0) * 1000:.1f} ms; False for an unfinished job: "
        f"{len(false_unfinished)}"
    )
    assert while_running >= 100, "too few cancels reached running jobs to prove anything"
    assert lost == []
    assert true_succeeded == []
    assert true_not_cancelled == []
    assert unadmitted == []
    assert late_admissions == []
    assert accepted_after_true == []
    assert false_unfinished == []
    assert b"failed" not in statuses


class JobRecord(NamedTuple):
    status: bytes | None
    finished_at: float | None
    cancel_accepted: float | None  # Redis' clock, set when a cancel reached it running
    began: dict[str, float]  # step id -> when BEGIN_STEP let it start (Redis' clock)


def _read_jobs(client: redis.Redis, ids: list[str]) -> dict[str, JobRecord]:
    with client.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hgetall(keys.job_key(job_id))
        hashes = pipe.execute()
    records = {}
    for job_id, fields in zip(ids, hashes, strict=True):
        f = {k.decode(): v for k, v in fields.items()}
        began = {
            name.removeprefix(keys.step_began_prefix): float(value)
            for name, value in f.items()
            if name.startswith(keys.step_began_prefix)
        }
        records[job_id] = JobRecord(
            f.get("status"),
            float(f["jk_finished_at"]) if "jk_finished_at" in f else None,
            float(f["jk_cancel"]) if "jk_cancel" in f else None,
            began,
        )
    return records
