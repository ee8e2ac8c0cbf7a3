"""A rolling deploy: workers with the old code meet a job only the new code defines.

The old worker hands the job back (logged once) until a worker that knows it takes it;
with none, the job fails with UnknownJobError after the grace period, never before.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from jobkit import JobkitSettings
from jobkit.connection import get_redis
from jobkit_dispatch import dispatch_job, get_job
from jobkit_dispatch.conformance._files import count
from jobkit_dispatch.engines.rq import RQEngine
from jobkit_dispatch.testing import RedisServer, use_engine, wait_for_job
from jobkit_dispatch.testing.rq_worker import WorkerProcess
from jobkit_engine import JobStatus
from tests import deploy_jobs, deploy_jobs_new

OLD = ["tests.deploy_jobs"]  # the fleet before the deploy
NEW = ["tests.deploy_jobs", "tests.deploy_jobs_new"]
FAST = {"JOBKIT_WORKER_HEARTBEAT": "0.3"}
HANDED_BACK = "this worker does not know job 'deploy.new'"


@pytest.fixture
def engine(jobkit_redis_server: RedisServer) -> Iterator[RQEngine]:
    redis.Redis.from_url(jobkit_redis_server.url).flushdb()
    settings = JobkitSettings(redis_url=jobkit_redis_server.url)
    engine = RQEngine(get_redis(settings=settings), settings=settings)
    with use_engine(engine):
        yield engine


def _worker(server: RedisServer, modules: list[str], log: Path, grace: float) -> WorkerProcess:
    env = {**FAST, "JOBKIT_UNKNOWN_JOB_GRACE": str(grace)}
    return WorkerProcess(server.url, [deploy_jobs.QUEUE], modules, env=env, log_path=log)


def test_rq_an_old_worker_hands_the_job_back_to_a_worker_that_knows_it(
    engine: RQEngine, jobkit_redis_server: RedisServer, tmp_path: Path
) -> None:
    workdir = str(tmp_path)
    old_log, new_log = tmp_path / "old.log", tmp_path / "new.log"
    with _worker(jobkit_redis_server, OLD, old_log, grace=120):
        d = dispatch_job(deploy_jobs_new.new, {"workdir": workdir})
        deadline = time.monotonic() + 10
        while old_log.read_text().count(HANDED_BACK) == 0:  # the old worker had it
            assert time.monotonic() < deadline, old_log.read_text()
            time.sleep(0.05)
        time.sleep(1.5)  # it keeps being offered the job, and keeps handing it back
        assert get_job(d.job_id).status == JobStatus.SCHEDULED
        with _worker(jobkit_redis_server, NEW, new_log, grace=120):
            info = wait_for_job(d.job_id, timeout=30)
    assert (info.status, info.result, info.attempts) == (JobStatus.SUCCEEDED, "new", 1)
    assert count(workdir, "new") == 1  # ran exactly once
    assert old_log.read_text().count(HANDED_BACK) == 1  # once per job, not per pop
    assert "UnknownJobError" not in old_log.read_text() + new_log.read_text()


def test_rq_a_job_no_worker_knows_fails_after_the_grace_period_not_before(
    engine: RQEngine, jobkit_redis_server: RedisServer, tmp_path: Path
) -> None:
    grace = 2.0
    log = tmp_path / "old.log"
    with _worker(jobkit_redis_server, OLD, log, grace=grace):
        started = time.monotonic()
        d = dispatch_job(deploy_jobs_new.new, {"workdir": str(tmp_path)})
        while (info := get_job(d.job_id)).status != JobStatus.FAILED:
            assert time.monotonic() - started < grace + 15, info
            time.sleep(0.05)
        failed_after = time.monotonic() - started
    assert failed_after >= grace
    assert info.error is not None and info.error.type == "UnknownJobError"
    assert "'deploy.new'" in info.error.message and "tests.deploy_jobs" in info.error.message
    assert info.attempts == 1
    assert count(str(tmp_path), "new") == 0
    text = log.read_text()
    assert text.count(HANDED_BACK) == 1
    assert text.count("no worker that knows it took it within 2s; failed") == 1
