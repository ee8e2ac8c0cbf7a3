"""Exactly once across engines, with real Redis and the Temporal dev server.

The fault that matters here is a lost reply: an enqueue that Redis applied but whose answer
never came back. The dispatcher cannot tell it from a failure, so the job goes to Temporal
while a copy may sit in Redis; every job's side effect is counted to show it runs once.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("temporalio")

from jobkit import JobkitSettings
from jobkit_dispatch import Dispatcher, set_dispatcher
from jobkit_dispatch.conformance._files import count
from jobkit_dispatch.engines.rq.scripts import ENQUEUE
from jobkit_dispatch.engines.temporal import TemporalEngine
from jobkit_dispatch.testing import RedisServer, wait_for_job
from jobkit_dispatch.testing.rq_worker import WorkerProcess
from jobkit_dispatch.testing.temporal_server import TemporalDevServer
from jobkit_engine import JobStatus
from tests import rq_jobs
from tests.lossy_proxy import LossyProxy

FAST = {"JOBKIT_WORKER_HEARTBEAT": "0.3"}
ENQUEUE_SHA = hashlib.sha1(ENQUEUE.encode()).hexdigest().encode()


def settings(redis_url: str, temporal_address: str, **overrides: object) -> JobkitSettings:
    values: dict[str, object] = {
        "redis_url": redis_url,
        "temporal_address": temporal_address,
        "temporal_task_queue_prefix": "once-",
        "worker_heartbeat": 0.3,
        "worker_check_ttl": 0.1,
        "circuit_cool_down": 0.05,
        "redis_socket_timeout": 0.3,
        **overrides,
    }
    return JobkitSettings(**values)  # type: ignore[arg-type]


class EveryNthEnqueue:
    """Loses the reply of every `n`-th enqueue script call after the first `spared`."""

    def __init__(self, n: int, spared: int = 0) -> None:
        self.n = n
        self.spared = spared
        self.lost = 0
        self._calls = itertools.count(1)
        self._lock = threading.Lock()

    def __call__(self, request: bytes) -> bool:
        if ENQUEUE_SHA not in request:
            return False
        with self._lock:
            call = next(self._calls) - self.spared
            lose = call > 0 and call % self.n == 0
            self.lost += lose
        return lose


@dataclass
class Stack:
    dispatcher: Dispatcher
    server: RedisServer
    rq_worker: WorkerProcess


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(appendonly=True).start()
    yield server
    server.stop()


@contextmanager
def running_stack(
    redis_url: str, server: RedisServer, temporal: TemporalDevServer, tmp_path: Path
) -> Iterator[Stack]:
    """A dispatcher on `redis_url`, an RQ worker and a Temporal worker (in this process, on
    the dispatcher's settings). `get_job` reads through a second dispatcher that talks to
    Redis directly: the faults injected are the dispatcher's alone."""
    dispatcher = Dispatcher(settings=settings(redis_url, temporal.address))
    reader = Dispatcher(settings=settings(server.url, temporal.address, redis_socket_timeout=2))
    engine = dispatcher.engine("temporal")
    assert isinstance(engine, TemporalEngine)
    previous = set_dispatcher(reader)
    rq_worker = WorkerProcess(
        server.url, ["rq-messages"], ["tests.rq_jobs"], env=FAST, log_path=tmp_path / "rq.log"
    ).start()
    try:
        with engine.start_worker(["rq-messages"], concurrency=8):
            yield Stack(dispatcher, server, rq_worker)
    finally:
        rq_worker.stop()
        set_dispatcher(previous)
        reader.close()
        dispatcher.close()


@pytest.mark.slow
def test_a_lost_enqueue_reply_never_runs_a_job_twice(
    redis_server: RedisServer, jobkit_temporal_server: TemporalDevServer, tmp_path: Path
) -> None:
    # The first enqueues all arrive, so that RQ's worker has a backlog: some lost copies are
    # still queued when their fence runs (withdrawn), others already started (RQ keeps them).
    lose = EveryNthEnqueue(2, spared=8)
    workdir, sent = str(tmp_path), []
    with (
        LossyProxy(redis_server.port, lose) as proxy,
        running_stack(proxy.url, redis_server, jobkit_temporal_server, tmp_path) as stack,
    ):
        for i in range(40):
            name = f"job-{i}"
            payload = {"workdir": workdir, "name": name, "nap": 0.15}
            sent.append((name, stack.dispatcher.dispatch(rq_jobs.count_slowly, payload)))
        infos = {d.job_id: wait_for_job(d.job_id, timeout=60) for _, d in sent}
    runs = {name: count(workdir, name) for name, _ in sent}
    twice = sorted(name for name, n in runs.items() if n > 1)
    never = sorted(name for name, n in runs.items() if n == 0)
    lost = [d for _, d in sent if "Timeout reading" in d.reason and "circuit" not in d.reason]
    print(
        f"{len(sent)} dispatches, {lose.lost} enqueue replies lost, "
        f"{len(twice)} ran twice, {len(never)} never ran; of the lost ones, "
        f"{sum(infos[d.job_id].engine == 'rq' for d in lost)} ran on RQ, "
        f"{sum(infos[d.job_id].engine == 'temporal' for d in lost)} on Temporal"
    )
    assert lose.lost >= 5 and len(lost) >= 5, "the fault was not injected"
    assert not twice, f"ran twice: {twice}"
    assert not never, f"never ran: {never}"
    assert all(info.status == JobStatus.SUCCEEDED for info in infos.values())
