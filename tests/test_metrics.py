"""Queue stats (`jobkit stats`) and Prometheus metrics (`jobkit metrics`), on a real Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from jobkit import JobkitSettings
from jobkit.connection import get_redis
from jobkit.settings import get_settings
from jobkit_dispatch import dispatch_job
from jobkit_dispatch.cli import main
from jobkit_dispatch.engines.rq import RQEngine
from jobkit_dispatch.engines.rq.stats import queue_stats
from jobkit_dispatch.metrics import RQQueueCollector
from jobkit_dispatch.testing import RedisServer, use_engine, wait_for_job
from jobkit_dispatch.testing.redis_server import free_port
from jobkit_dispatch.testing.rq_worker import WorkerProcess
from tests.jobs import greet

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def settings(jobkit_redis_server: RedisServer) -> JobkitSettings:
    redis.Redis.from_url(jobkit_redis_server.url).flushdb()
    return JobkitSettings(redis_url=jobkit_redis_server.url, worker_heartbeat=1)


@pytest.fixture
def engine(settings: JobkitSettings) -> Iterator[RQEngine]:
    engine = RQEngine(get_redis(settings=settings), settings=settings)
    with use_engine(engine):
        yield engine


def test_stats_count_jobs_by_state_and_live_workers(
    settings: JobkitSettings, engine: RQEngine, tmp_path: Path
) -> None:
    client = get_redis(settings=settings)
    for name in ("a", "b"):
        dispatch_job(greet, {"name": name})
    dispatch_job(greet, {"name": "later"}, delay=3600)
    (default,) = queue_stats(client, ["default"], settings)
    assert default.states == {
        "queued": 2,
        "scheduled": 1,
        "running": 0,
        "finished": 0,
        "failed": 0,
        "cancelled": 0,
    }
    assert default.live_workers == 0

    url = settings.redis_url.get_secret_value()
    with WorkerProcess(url, ["default"], ["tests.jobs"], env={"JOBKIT_WORKER_HEARTBEAT": "1"}):
        job = dispatch_job(greet, {"name": "c"})
        wait_for_job(job.job_id, timeout=30)
        (default,) = queue_stats(client, ["default"], settings)
        assert (default.queued, default.finished, default.live_workers) == (0, 3, 1)


def test_collector_reports_jobs_workers_and_redis_down(
    settings: JobkitSettings, engine: RQEngine
) -> None:
    dispatch_job(greet, {"name": "a"})
    collector = RQQueueCollector(get_redis(settings=settings), ["default", "data_sync"], settings)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in collector.collect()
        for s in family.samples
    }
    assert samples[("jobkit_redis_up", ())] == 1
    assert samples[("jobkit_rq_jobs", (("queue", "default"), ("state", "queued")))] == 1
    assert samples[("jobkit_rq_jobs", (("queue", "data_sync"), ("state", "queued")))] == 0
    assert samples[("jobkit_rq_live_workers", (("queue", "default"),))] == 0

    dead = JobkitSettings(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    down = RQQueueCollector(get_redis(settings=dead), ["default"], dead)
    families = list(down.collect())
    assert [(f.name, f.samples[0].value) for f in families] == [("jobkit_redis_up", 0)]


@pytest.fixture
def fresh_settings() -> Iterator[None]:
    """The command reads JOBKIT_* anew (the process caches its settings)."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.usefixtures("fresh_settings")
def test_stats_command_prints_a_table_and_fails_clearly_without_redis(
    settings: JobkitSettings, engine: RQEngine
) -> None:
    dispatch_job(greet, {"name": "a"})
    env = {"JOBKIT_REDIS_URL": settings.redis_url.get_secret_value()}
    get_settings.cache_clear()
    result = CliRunner().invoke(main, ["stats", "--queue", "default"], env=env)
    assert result.exit_code == 0, result.output
    header, row = result.output.splitlines()
    assert header.split() == [
        "queue",
        "queued",
        "scheduled",
        "running",
        "finished",
        "failed",
        "cancelled",
        "workers",
        "quarantined",
    ]
    assert row.split() == ["default", "1", "0", "0", "0", "0", "0", "0", "0"]

    secret = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    get_settings.cache_clear()
    result = CliRunner().invoke(main, ["stats"], env={"JOBKIT_REDIS_URL": secret})
    assert result.exit_code == 1
    assert "did not answer" in result.output and "hunter2" not in result.output


@pytest.mark.slow
def test_metrics_command_serves_prometheus_text_until_sigterm(
    settings: JobkitSettings, engine: RQEngine
) -> None:
    dispatch_job(greet, {"name": "a"})
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "jobkit_dispatch.cli", "metrics", "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, "JOBKIT_REDIS_URL": settings.redis_url.get_secret_value()},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                body = httpx.get(f"http://127.0.0.1:{port}/metrics").text
                break
            except httpx.TransportError:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline, "the metrics server did not come up"
                time.sleep(0.1)
        values = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body)
            for s in family.samples
        }
        assert values[("jobkit_redis_up", ())] == 1
        assert values[("jobkit_rq_jobs", (("queue", "default"), ("state", "queued")))] == 1
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
