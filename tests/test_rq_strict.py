"""`JOBKIT_STRICT=1` on an RQ worker (staging): a job that would break only on Temporal
fails where it is seen, with the call named; without it the same job succeeds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from jobkit import JobkitSettings
from jobkit.connection import get_redis
from jobkit_dispatch import dispatch_job
from jobkit_dispatch.engines.rq import RQEngine
from jobkit_dispatch.testing import RedisServer, use_engine, wait_for_job
from jobkit_dispatch.testing.rq_worker import WorkerProcess
from jobkit_engine import JobStatus
from tests import strict_jobs

FAST = {"JOBKIT_WORKER_HEARTBEAT": "0.3"}


@pytest.fixture
def engine(jobkit_redis_server: RedisServer) -> Iterator[RQEngine]:
    settings = JobkitSettings(redis_url=jobkit_redis_server.url)
    with use_engine(RQEngine(get_redis(settings=settings), settings=settings)) as engine:
        yield engine  # type: ignore[misc]


@pytest.mark.parametrize("strict", [True, False])
def test_a_strict_worker_fails_a_job_that_reads_the_clock_outside_a_step(
    jobkit_redis_server: RedisServer, engine: RQEngine, tmp_path: Path, strict: bool
) -> None:
    env = {**FAST, "JOBKIT_STRICT": "1" if strict else "0"}
    with WorkerProcess(
        jobkit_redis_server.url,
        ["default"],
        ["tests.strict_jobs"],
        env=env,
        log_path=tmp_path / "worker.log",
    ):
        info = wait_for_job(dispatch_job(strict_jobs.reads_time).job_id, timeout=30)
    if strict:
        assert info.status == JobStatus.FAILED, info
        assert info.error is not None and info.error.type == "StrictModeError"
        assert "time.time" in info.error.message
        assert info.attempts == 1
    else:
        assert info.status == JobStatus.SUCCEEDED, info.error
