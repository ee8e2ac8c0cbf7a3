"""A rolling deploy: workers with the old code meet a job only the new code defines.

The old worker hands the job back (logged once) until a worker that knows it takes it;
with none, the job fails with UnknownJobError after the grace period, never before.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis

from jobkit import JobkitSettings
from jobkit.connection import get_redis
from jobkit_dispatch import dispatch_job, get_job
from jobkit_dispatch.conformance._files import count
from jobkit_dispatch.engines.rq import RQEngine
from jobkit_dispatch.testing import RedisServer, use_engine, wait_for_job
from jobkit_dispatch.testing.rq_worker import WorkerProcess
from jobkit_dispatch.testing.temporal_server import TemporalDevServer
from jobkit_engine import JobStatus
from tests import deploy_jobs, deploy_jobs_new

if TYPE_CHECKING:
    from jobkit_dispatch.engines.temporal import TemporalEngine

ROOT = Path(__file__).resolve().parents[1]

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
    assert old_log.read_text().count(f"job {d.job_id} handed back: deploy.new") == 1
    assert f"job {d.job_id} succeeded: deploy.new queue=deploy engine=rq" in new_log.read_text()
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
    assert text.count(f"job {d.job_id} handed back: deploy.new") == 1
    assert text.count(f"job {d.job_id} failed: deploy.new") == 1
    assert "error=UnknownJobError: no worker that knows job 'deploy.new'" in text


# -- Temporal ------------------------------------------------------------------------------


class _TemporalWorker:
    """`jobkit worker --engine temporal` for the deploy queue, its output collected."""

    def __init__(self, address: str, prefix: str, modules: list[str], grace: float) -> None:
        imports = [arg for module in modules for arg in ("--import", module)]
        env = {
            **os.environ,
            "JOBKIT_TEMPORAL_ADDRESS": address,
            "JOBKIT_TEMPORAL_TASK_QUEUE_PREFIX": prefix,
            "JOBKIT_UNKNOWN_JOB_GRACE": str(grace),
        }
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "jobkit_dispatch.cli", "worker", "--engine", "temporal"),
                *("--queue", deploy_jobs.QUEUE, *imports),
            ],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        assert self.process.stdout is not None
        self._reader = threading.Thread(
            target=lambda: self.lines.extend(self.process.stdout),  # type: ignore[arg-type]
            daemon=True,
        )
        self._reader.start()

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.text:
            assert self.process.poll() is None, self.text
            assert time.monotonic() < deadline, f"{text!r} never logged:\n{self.text}"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._reader.join(timeout=10)


@pytest.fixture
def temporal(jobkit_temporal_server: TemporalDevServer) -> Iterator[tuple[TemporalEngine, str]]:
    pytest.importorskip("temporalio")
    from jobkit_dispatch.engines.temporal import TemporalEngine

    prefix = f"deploy-{uuid.uuid4().hex[:8]}-"  # a task queue of this test's own
    engine = TemporalEngine(
        jobkit_temporal_server.address,
        task_queue_prefix=prefix,
        sleep_threshold=timedelta(seconds=0.5),
    )
    with use_engine(engine):
        yield engine, prefix
    engine.close()


@pytest.fixture
def old_temporal_worker(
    jobkit_temporal_server: TemporalDevServer, temporal: tuple[TemporalEngine, str]
) -> Iterator[Callable[[float], _TemporalWorker]]:
    started: list[_TemporalWorker] = []

    def start(grace: float) -> _TemporalWorker:
        worker = _TemporalWorker(jobkit_temporal_server.address, temporal[1], OLD, grace)
        started.append(worker)
        worker.wait_for("serving deploy on Temporal")
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.mark.slow
def test_temporal_an_old_worker_hands_the_job_back_to_a_worker_that_knows_it(
    temporal: tuple[TemporalEngine, str],
    old_temporal_worker: Callable[[float], _TemporalWorker],
    tmp_path: Path,
) -> None:
    """The new worker runs in this process, which imports the new job module. As in a
    rolling deploy, the old worker stops once the new one serves: which of two live
    workers gets a retried workflow task is the server's choice, and each retry of it
    comes later than the last (10 s, then 15, 20, 30 s... up to 10 minutes)."""
    engine, _ = temporal
    workdir = str(tmp_path)
    old = old_temporal_worker(120)
    d = dispatch_job(deploy_jobs_new.new, {"workdir": workdir})
    old.wait_for(HANDED_BACK)
    assert get_job(d.job_id).status == JobStatus.QUEUED  # not failed
    with engine.start_worker([deploy_jobs.QUEUE]):
        old.stop()
        assert old.process.returncode == 0, old.text
        info = wait_for_job(d.job_id, timeout=60)
    assert (info.status, info.result, info.engine) == (JobStatus.SUCCEEDED, "new", "temporal")
    assert count(workdir, "new") == 1  # ran exactly once
    assert old.text.count(HANDED_BACK) == 1  # once, however often it had the task
    assert old.text.count(f"job {d.job_id} handed back: deploy.new queue=deploy") == 1
    assert "UnknownJobError" not in old.text and "Failed activation" not in old.text


@pytest.mark.slow
def test_temporal_a_job_no_worker_knows_fails_after_the_grace_period_not_before(
    temporal: tuple[TemporalEngine, str],
    old_temporal_worker: Callable[[float], _TemporalWorker],
    tmp_path: Path,
) -> None:
    grace = 2.0
    old = old_temporal_worker(grace)
    started = time.monotonic()
    d = dispatch_job(deploy_jobs_new.new, {"workdir": str(tmp_path)})
    while (info := get_job(d.job_id)).status != JobStatus.FAILED:
        assert time.monotonic() - started < grace + 60, info
        time.sleep(0.1)
    assert time.monotonic() - started >= grace
    assert info.error is not None and info.error.type == "UnknownJobError"
    assert "'deploy.new'" in info.error.message and "tests.deploy_jobs" in info.error.message
    assert count(str(tmp_path), "new") == 0
    assert old.text.count(HANDED_BACK) == 1
    assert old.text.count("no worker that knows it took it within 2s; failed") == 1
    assert old.text.count(f"job {d.job_id} failed: deploy.new") == 1


@pytest.mark.slow
def test_temporal_a_job_that_wakes_on_an_old_worker_fails_after_the_grace_period(
    temporal: tuple[TemporalEngine, str],
    old_temporal_worker: Callable[[float], _TemporalWorker],
    tmp_path: Path,
) -> None:
    """A rollback: the job began on a new worker, which left while it slept; the old one
    replays its history, hands it back, and after the grace terminates it as failed."""
    engine, _ = temporal
    workdir = str(tmp_path)
    with engine.start_worker([deploy_jobs.QUEUE]):
        d = dispatch_job(deploy_jobs_new.new_napper, {"workdir": workdir})
        wait_for_job(d.job_id, lambda i: i.status == JobStatus.SLEEPING, timeout=20)
    old = old_temporal_worker(1.0)
    info = wait_for_job(d.job_id, timeout=90)
    assert info.status == JobStatus.FAILED, info
    assert info.error is not None and info.error.type == "UnknownJobError"
    assert "'deploy.new_napper'" in info.error.message
    assert (count(workdir, "before"), count(workdir, "after")) == (1, 0)
    assert old.text.count("this worker does not know job 'deploy.new_napper'") == 1
    assert old.text.count(f"job {d.job_id} failed: deploy.new_napper") == 1  # decided in a replay
