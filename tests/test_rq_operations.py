"""RQ workers under operational accidents: Redis loses its data, or is down when asked to stop."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from jobkit import JobkitSettings
from jobkit.connection import get_redis
from jobkit_dispatch import dispatch_job
from jobkit_dispatch.engines import JobRequest
from jobkit_dispatch.engines.rq import RQEngine
from jobkit_dispatch.testing import RedisServer, use_engine, wait_for_job
from jobkit_dispatch.testing.redis_server import free_port
from jobkit_dispatch.testing.rq_worker import WorkerProcess
from jobkit_engine import JobStatus
from tests import rq_jobs

ROOT = Path(__file__).resolve().parents[1]
HEARTBEAT = 0.3


@pytest.fixture
def client(jobkit_redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(jobkit_redis_server.url)
    client.flushdb()
    yield client
    client.close()


def _poll(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@contextlib.contextmanager
def _worker_command(
    engine: str, env: dict[str, str]
) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """`jobkit worker --engine ENGINE` for the rq-messages queue, its output collected in
    the list; killed on the way out if the test left it running."""
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "jobkit_dispatch.cli", "worker", "--engine", engine),
            *("--queue", "rq-messages", "--import", "tests.rq_jobs"),
        ],
        env={**os.environ, **env},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    assert process.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        yield process, lines
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        reader.join(timeout=10)


def test_a_worker_registers_again_after_redis_loses_its_data(
    jobkit_redis_server: RedisServer, client: redis.Redis, tmp_path: Path
) -> None:
    settings = JobkitSettings(
        redis_url=jobkit_redis_server.url, worker_heartbeat=HEARTBEAT, worker_check_ttl=0
    )
    engine = RQEngine(get_redis(settings=settings), settings=settings)
    probe = JobRequest("probe", rq_jobs.ok.name, None, "rq-messages")
    log_path = tmp_path / "worker.log"
    env = {"JOBKIT_WORKER_HEARTBEAT": str(HEARTBEAT)}
    with WorkerProcess(
        jobkit_redis_server.url, ["rq-messages"], ["tests.rq_jobs"], env=env, log_path=log_path
    ):
        _poll(lambda: engine.availability(probe) is None, 10, "a live worker")
        client.flushall()  # what a restart without persistence or an empty replica looks like
        _poll(lambda: engine.availability(probe) is None, 10, "the worker to register again")
        with use_engine(engine):
            d = dispatch_job(rq_jobs.ok, {"workdir": str(tmp_path)})
            info = wait_for_job(d.job_id)
        assert (d.engine, info.status, info.result) == ("rq", JobStatus.SUCCEEDED, "ok")
    assert log_path.read_text().count("lost this worker's registration") == 1


def test_sigterm_stops_a_worker_waiting_for_redis_at_start_up() -> None:
    env = {
        "JOBKIT_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
        "JOBKIT_REDIS_CONNECT_TIMEOUT": "0.5",
    }
    with _worker_command("rq", env) as (process, lines):
        _poll(lambda: "Redis unavailable" in "".join(lines), 20, "the worker to wait for Redis")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0, "".join(lines)
    assert "stopped before Redis answered" in "".join(lines)


def test_a_wrong_redis_password_stops_the_worker_with_a_clear_error() -> None:
    """Not an outage to ride out: the worker exits at once and says what to fix, without
    printing the password."""
    with RedisServer(password="right-secret") as server:
        wrong = server.url.replace("right-secret", "wrong-secret")
        out = subprocess.run(
            [
                *(sys.executable, "-m", "jobkit_dispatch.cli", "worker", "--engine", "rq"),
                *("--queue", "rq-messages", "--import", "tests.rq_jobs"),
            ],
            env={**os.environ, "JOBKIT_REDIS_URL": wrong},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    said = out.stdout + out.stderr
    assert out.returncode == 2, said
    assert "refused this worker's credentials" in said
    assert "JOBKIT_REDIS_URL" in said
    assert "wrong-secret" not in said and "right-secret" not in said


def test_rq_workers_keep_serving_while_temporal_is_unreachable(
    jobkit_redis_server: RedisServer, client: redis.Redis, tmp_path: Path
) -> None:
    """`jobkit worker --engine all` with Temporal down: its Temporal worker waits for the
    server (logging) instead of exiting, so the RQ worker beside it is not stopped."""
    env = {
        "JOBKIT_REDIS_URL": jobkit_redis_server.url,
        "JOBKIT_TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",  # nothing listens there
        "JOBKIT_WORKER_HEARTBEAT": str(HEARTBEAT),
    }
    settings = JobkitSettings(redis_url=jobkit_redis_server.url, worker_heartbeat=HEARTBEAT)
    with _worker_command("all", env) as (process, lines):
        _poll(lambda: "is unreachable" in "".join(lines), 30, "the Temporal worker to wait")
        with use_engine(RQEngine(get_redis(settings=settings), settings=settings)):
            d = dispatch_job(rq_jobs.ok, {"workdir": str(tmp_path)})
            info = wait_for_job(d.job_id, timeout=30)
        assert (info.status, info.engine) == (JobStatus.SUCCEEDED, "rq"), info
        assert process.poll() is None, "".join(lines)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0, "".join(lines)
