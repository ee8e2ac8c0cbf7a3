"""The engine conformance suite on RQ: a real redis-server and a real worker process."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from jobkit import JobkitSettings
from jobkit.connection import get_redis
from jobkit_dispatch.conformance import EngineConformance, Harness
from jobkit_dispatch.engines.rq import RQEngine
from jobkit_dispatch.testing import RedisServer
from jobkit_dispatch.testing.rq_worker import WorkerProcess

# Strict, as in staging: the worker holds handlers to Temporal's workflow rules.
WORKER_ENV = {
    "JOBKIT_SLEEP_THRESHOLD": "1",
    "JOBKIT_WORKER_HEARTBEAT": "0.5",
    "JOBKIT_STRICT": "1",
    "JOBKIT_UNKNOWN_JOB_GRACE": "1",
}


@pytest.fixture(scope="module")
def rq_worker(
    jobkit_redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    log = Path(tmp_path_factory.mktemp("worker")) / "worker.log"
    with WorkerProcess(
        jobkit_redis_server.url,
        ["conformance"],
        ["jobkit_dispatch.conformance.jobs"],
        env=WORKER_ENV,
        log_path=log,
    ) as worker:
        yield worker


class TestRQConformance(EngineConformance):
    @pytest.fixture
    def harness(self, jobkit_redis_server: RedisServer, rq_worker: WorkerProcess) -> Harness:
        settings = JobkitSettings(redis_url=jobkit_redis_server.url)
        engine = RQEngine(get_redis(settings=settings), settings=settings)
        return Harness(
            engine,
            long_sleep=timedelta(seconds=2),
            short_sleep=timedelta(milliseconds=50),
            strict=True,
            unknown_job_grace=timedelta(seconds=1),
        )
