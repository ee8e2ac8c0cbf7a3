"""The dispatcher with both real engines: Redis dies under load, pickup timeouts, both down.

Every job's side effect is counted, so "completes exactly once" is checked, not assumed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

pytest.importorskip("temporalio")

from jobkit import JobkitSettings
from jobkit.errors import DispatchError
from jobkit_dispatch import Dispatcher, set_dispatcher
from jobkit_dispatch.conformance._files import count, open_gate
from jobkit_dispatch.engines.temporal import TemporalEngine
from jobkit_dispatch.testing import RedisServer, wait_for_job
from jobkit_dispatch.testing.redis_server import free_port
from jobkit_dispatch.testing.rq_worker import WorkerProcess
from jobkit_dispatch.testing.temporal_server import TemporalDevServer
from jobkit_engine import JobStatus
from tests import rq_jobs

FAST = {"JOBKIT_WORKER_HEARTBEAT": "0.3"}


def make_dispatcher(redis_url: str, temporal_address: str) -> Dispatcher:
    settings = JobkitSettings(
        redis_url=redis_url,
        temporal_address=temporal_address,
        temporal_task_queue_prefix="fallback-",
        worker_heartbeat=0.3,
        worker_check_ttl=0.1,
        circuit_cool_down=0.5,
    )
    return Dispatcher(settings=settings)


@pytest.fixture
def both(
    jobkit_temporal_server: TemporalDevServer, tmp_path: Path
) -> Iterator[tuple[Dispatcher, RedisServer, WorkerProcess]]:
    """A dispatcher over a fresh AOF Redis with an RQ worker, and Temporal with a worker."""
    server = RedisServer(appendonly=True).start()
    dispatcher = make_dispatcher(server.url, jobkit_temporal_server.address)
    temporal = dispatcher.engine("temporal")
    assert isinstance(temporal, TemporalEngine)
    previous = set_dispatcher(dispatcher)
    rq_worker = WorkerProcess(
        server.url,
        ["rq-messages", "rq-shutdown"],
        ["tests.rq_jobs"],
        env=FAST,
        log_path=tmp_path / "rq.log",
    ).start()
    try:
        with temporal.start_worker(["rq-messages", "rq-shutdown"]):
            yield dispatcher, server, rq_worker
    finally:
        rq_worker.stop()
        set_dispatcher(previous)
        dispatcher.close()
        server.stop()


@pytest.mark.slow
def test_redis_killed_under_a_stream_of_dispatches_loses_and_duplicates_nothing(
    both: tuple[Dispatcher, RedisServer, WorkerProcess], tmp_path: Path
) -> None:
    dispatcher, server, _ = both
    workdir, sent = str(tmp_path), []

    def send(n: int) -> None:
        for _ in range(n):
            name = f"job-{len(sent)}"
            sent.append(
                (name, dispatcher.dispatch(rq_jobs.count_once, {"workdir": workdir, "name": name}))
            )

    send(30)
    server.stop(kill=True)  # SIGKILL, mid-stream
    send(30)  # never raises: Temporal takes them
    server.start()  # AOF brings back what was queued
    deadline = time.monotonic() + 15
    while sent[-1][1].engine != "rq":  # the breaker closes again once Redis answers
        assert time.monotonic() < deadline, "dispatches never came back to RQ"
        send(1)
        time.sleep(0.05)
    send(20)
    for _, d in sent:
        assert wait_for_job(d.job_id, timeout=30).status == JobStatus.SUCCEEDED
    assert all(count(workdir, name) == 1 for name, _ in sent), "a job ran twice or never"
    engines = {d.engine for _, d in sent}
    assert engines == {"rq", "temporal"}
    assert any(d.reason.startswith("redis-unhealthy") for _, d in sent)


def test_pickup_timeout_moves_the_job_to_temporal_once(
    both: tuple[Dispatcher, RedisServer, WorkerProcess], tmp_path: Path
) -> None:
    dispatcher, server, _ = both
    workdir = str(tmp_path)
    busy = dispatcher.dispatch(rq_jobs.held, {"workdir": workdir, "gate": "busy"})
    assert busy.engine == "rq"
    wait_for_job(busy.job_id, lambda i: i.status == JobStatus.RUNNING)
    d = dispatcher.dispatch(rq_jobs.held, {"workdir": workdir}, pickup_timeout=0.2)
    assert (d.engine, d.reason) == ("temporal", "pickup-timeout")
    assert redis.Redis.from_url(server.url).exists(f"rq:job:{d.job_id}") == 0
    open_gate(workdir, "go")
    info = wait_for_job(d.job_id, timeout=20)
    assert (info.status, info.engine, info.reason) == (
        JobStatus.SUCCEEDED,
        "temporal",
        "pickup-timeout",
    )
    open_gate(workdir, "busy")
    assert wait_for_job(busy.job_id).status == JobStatus.SUCCEEDED
    assert count(workdir, "first") == 2  # each of the two jobs once


def test_no_worker_and_temporal_down_raises_and_leaves_nothing(tmp_path: Path) -> None:
    with RedisServer() as server:
        dispatcher = make_dispatcher(server.url, f"127.0.0.1:{free_port()}")
        try:
            with pytest.raises(DispatchError) as caught:
                dispatcher.dispatch(rq_jobs.ok, {"workdir": str(tmp_path)}, idempotency_key="x")
        finally:
            dispatcher.close()
        assert caught.value.causes["rq"] == "no-live-worker: rq-messages"
        assert "temporal" in caught.value.causes
        assert redis.Redis.from_url(server.url).keys("rq:job:*") == []


def test_pickup_timeout_with_temporal_down_withdraws_and_raises(tmp_path: Path) -> None:
    workdir = str(tmp_path)
    with RedisServer() as server:
        dispatcher = make_dispatcher(server.url, f"127.0.0.1:{free_port()}")
        worker = WorkerProcess(
            server.url, ["rq-shutdown"], ["tests.rq_jobs"], env=FAST, log_path=tmp_path / "rq.log"
        )
        with worker:
            busy = dispatcher.dispatch(rq_jobs.held, {"workdir": workdir, "gate": "busy"})
            with pytest.raises(DispatchError) as caught:
                dispatcher.dispatch(rq_jobs.held, {"workdir": workdir}, pickup_timeout=0.2)
            assert caught.value.causes["rq"] == "pickup-timeout"
            keys = {k.decode() for k in redis.Redis.from_url(server.url).keys("rq:job:*")}
            assert keys == {f"rq:job:{busy.job_id}"}  # the withdrawn job left nothing behind
            open_gate(workdir, "busy")
        dispatcher.close()
