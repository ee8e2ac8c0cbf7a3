"""Exactly once across engines, with real Redis and the Temporal dev server.

The fault that matters here is a lost reply: an enqueue that Redis applied but whose answer
never came back. The dispatcher cannot tell it from a failure, so the job goes to Temporal
while a copy may sit in Redis; every job's side effect is counted to show it runs once.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import redis

pytest.importorskip("temporalio")

from jobkit import JobkitSettings
from jobkit_dispatch import Dispatched, Dispatcher, set_dispatcher
from jobkit_dispatch.conformance._files import count, open_gate
from jobkit_dispatch.engines import JobRequest
from jobkit_dispatch.engines.rq.scripts import ENQUEUE
from jobkit_dispatch.engines.temporal import TemporalEngine
from jobkit_dispatch.testing import RedisServer, wait_for_job
from jobkit_dispatch.testing.rq_worker import WorkerProcess
from jobkit_dispatch.testing.temporal_server import TemporalDevServer
from jobkit_engine import JobStatus
from tests import rq_jobs
from tests.lossy_proxy import LossyProxy
from tests.waiting import eventually

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
    redis_url: str,
    server: RedisServer,
    temporal: TemporalDevServer,
    tmp_path: Path,
    queues: tuple[str, ...] = ("rq-messages",),
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
        server.url, queues, ["tests.rq_jobs"], env=FAST, log_path=tmp_path / "rq.log"
    ).start()
    try:
        with engine.start_worker(queues, concurrency=8):
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
        lost = [d for _, d in sent if d.reason.endswith("(the enqueue may have been applied)")]
        temporal = stack.dispatcher.engine("temporal")
        for d in lost:
            if infos[d.job_id].engine == "rq":  # RQ had it first: Temporal's run is not the job
                eventually(lambda d=d: temporal.get(d.job_id) is None)
    runs = {name: count(workdir, name) for name, _ in sent}
    twice = sorted(name for name, n in runs.items() if n > 1)
    never = sorted(name for name, n in runs.items() if n == 0)
    print(
        f"{len(sent)} dispatches, {lose.lost} enqueue replies lost, "
        f"{len(twice)} ran twice, {len(never)} never ran; of the lost ones, "
        f"{sum(infos[d.job_id].engine == 'rq' for d in lost)} ran on RQ, "
        f"{sum(infos[d.job_id].engine == 'temporal' for d in lost)} on Temporal"
    )
    assert lose.lost >= 5, "the fault was not injected"
    assert not twice, f"ran twice: {twice}"
    assert not never, f"never ran: {never}"
    assert len(lost) >= lose.lost, "a lost reply was not reported as such"
    assert all(info.status == JobStatus.SUCCEEDED for info in infos.values())


# -- idempotency keys: the engine that takes the job settles the key -----------------------


@contextmanager
def hung_temporal() -> Iterator[str]:
    """The address of a "Temporal" that accepts connections and never answers."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield f"127.0.0.1:{listener.getsockname()[1]}"


def rq_worker(server: RedisServer, tmp_path: Path, *queues: str) -> WorkerProcess:
    log = tmp_path / f"rq-{uuid.uuid4().hex[:6]}.log"
    return WorkerProcess(server.url, list(queues), ["tests.rq_jobs"], env=FAST, log_path=log)


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_an_idempotent_dispatch_rq_takes_never_waits_for_a_hung_temporal(
    redis_server: RedisServer, tmp_path: Path, flavour: str
) -> None:
    workdir = str(tmp_path)
    payload = {"workdir": workdir, "name": "keyed"}
    with hung_temporal() as address, rq_worker(redis_server, tmp_path, "rq-messages"):
        dispatcher = Dispatcher(settings=settings(redis_server.url, address))
        previous = set_dispatcher(dispatcher)
        try:

            def send() -> Dispatched:
                if flavour == "sync":
                    return dispatcher.dispatch(rq_jobs.count_slowly, payload, idempotency_key="k")
                coro = dispatcher.adispatch(rq_jobs.count_slowly, payload, idempotency_key="k")
                return asyncio.run(coro)

            started = time.monotonic()
            sent = [send() for _ in range(3)]
            elapsed = time.monotonic() - started
            info = wait_for_job(sent[0].job_id)
        finally:
            set_dispatcher(previous)
            dispatcher.close()
    assert [(d.engine, d.created) for d in sent] == [("rq", True), ("rq", False), ("rq", False)]
    assert len({d.job_id for d in sent}) == 1
    assert elapsed < 1.0, f"three dispatches took {elapsed:.1f}s: Temporal was asked"
    assert (info.status, info.engine) == (JobStatus.SUCCEEDED, "rq")
    assert count(workdir, "keyed") == 1


def test_a_key_already_on_temporal_is_not_created_again_on_rq(
    redis_server: RedisServer, jobkit_temporal_server: TemporalDevServer, tmp_path: Path
) -> None:
    workdir = str(tmp_path)
    payload = {"workdir": workdir, "name": "keyed"}
    first_dispatcher = Dispatcher(
        settings=settings(redis_server.url, jobkit_temporal_server.address)
    )
    engine = first_dispatcher.engine("temporal")
    assert isinstance(engine, TemporalEngine)
    previous = set_dispatcher(first_dispatcher)
    try:
        with engine.start_worker(["rq-messages"]):
            # No RQ worker: the job goes to Temporal, and runs there.
            first = first_dispatcher.dispatch(rq_jobs.count_slowly, payload, idempotency_key="k")
            assert (first.engine, first.created) == ("temporal", True)
            assert wait_for_job(first.job_id, timeout=20).status == JobStatus.SUCCEEDED
        # Now RQ can take jobs, and Temporal hangs: the key must still name the first job.
        with rq_worker(redis_server, tmp_path, "rq-messages"), hung_temporal() as address:
            second_dispatcher = Dispatcher(settings=settings(redis_server.url, address))
            again = second_dispatcher.dispatch(rq_jobs.count_slowly, payload, idempotency_key="k")
            second_dispatcher.close()
            # a job the RQ worker would take now, to show it had the chance to run a copy
            other = first_dispatcher.dispatch(rq_jobs.count_slowly, {**payload, "name": "other"})
            assert wait_for_job(other.job_id).engine == "rq"
        info = wait_for_job(first.job_id)
    finally:
        set_dispatcher(previous)
        first_dispatcher.close()
    assert (again.job_id, again.engine, again.created) == (first.job_id, "temporal", False)
    assert again.reason == first.reason == "no-live-worker: rq-messages"
    assert (info.status, info.engine) == (JobStatus.SUCCEEDED, "temporal")
    assert count(workdir, "keyed") == 1


@pytest.mark.slow
def test_a_keyed_job_that_fell_back_while_redis_was_down_waits_for_redis_and_runs_once(
    redis_server: RedisServer, jobkit_temporal_server: TemporalDevServer, tmp_path: Path
) -> None:
    """Two keyed jobs wait on RQ behind a busy worker when Redis dies; dispatched again, they
    go to Temporal, which cannot know RQ has them: they wait for Redis. One is cancelled
    meanwhile. Redis comes back (AOF): the RQ copies are withdrawn, one job runs on Temporal,
    the cancelled one nowhere."""
    workdir = str(tmp_path)
    with running_stack(
        redis_server.url, redis_server, jobkit_temporal_server, tmp_path, ("rq-shutdown",)
    ) as stack:
        dispatcher = stack.dispatcher
        busy = dispatcher.dispatch(rq_jobs.held, {"workdir": workdir, "gate": "busy"})
        wait_for_job(busy.job_id, lambda i: i.status == JobStatus.RUNNING)
        keyed = {"workdir": workdir, "gate": "go"}
        first = [dispatcher.dispatch(rq_jobs.held, keyed, idempotency_key=k) for k in "ab"]
        assert [d.engine for d in first] == ["rq", "rq"]  # queued behind `busy`
        redis_server.stop(kill=True)
        # A job without a key cannot be on RQ: it runs on Temporal at once, Redis or not.
        plain = dispatcher.dispatch(rq_jobs.held, {"workdir": workdir, "gate": "plain"})
        open_gate(workdir, "plain")
        assert wait_for_job(plain.job_id, timeout=20).status == JobStatus.SUCCEEDED
        again = [dispatcher.dispatch(rq_jobs.held, keyed, idempotency_key=k) for k in "ab"]
        assert [(d.engine, d.job_id) for d in again] == [("temporal", d.job_id) for d in first]
        assert dispatcher.cancel(again[1].job_id) is True  # only Temporal answers now
        open_gate(workdir, "go")
        redis_server.start()  # the AOF brings back both RQ copies, still queued
        ran = wait_for_job(again[0].job_id, timeout=30)
        cancelled = wait_for_job(again[1].job_id, timeout=30)
        open_gate(workdir, "busy")
        assert wait_for_job(busy.job_id, timeout=20).status == JobStatus.SUCCEEDED
        retried = dispatcher.dispatch(rq_jobs.held, keyed, idempotency_key="a")
    assert (ran.status, ran.engine) == (JobStatus.SUCCEEDED, "temporal")
    assert (cancelled.status, cancelled.engine) == (JobStatus.CANCELLED, "temporal")
    # busy, plain and the keyed job "a", once each
    assert count(workdir, "first") == 3, "a keyed job ran twice, or the cancelled one ran"
    assert count(workdir, "second") == 3
    assert (retried.engine, retried.created) == ("temporal", False)


@pytest.mark.parametrize("rq_copy", ["queued", "started"])
def test_a_fenced_temporal_job_settles_with_rqs_copy_before_it_runs(
    redis_server: RedisServer,
    jobkit_temporal_server: TemporalDevServer,
    tmp_path: Path,
    rq_copy: str,
) -> None:
    """RQ holds a copy (no RQ worker here; "started" is what START leaves). Queued: the
    fence withdraws it and the job runs on Temporal. Started: the Temporal run ends without
    running the handler, and only RQ's job is reported."""
    workdir = str(tmp_path)
    dispatcher = Dispatcher(settings=settings(redis_server.url, jobkit_temporal_server.address))
    rq, temporal = dispatcher.engine("rq"), dispatcher.engine("temporal")
    assert isinstance(temporal, TemporalEngine)
    request = JobRequest(
        job_id=uuid.uuid4().hex,
        job_name=rq_jobs.count_slowly.name,
        payload={"workdir": workdir, "name": "fenced"},
        queue="rq-messages",
        reason="rq",
    )
    assert rq.enqueue(request) is True
    if rq_copy == "started":
        client = redis.Redis.from_url(redis_server.url)
        client.hset(f"rq:job:{request.job_id}", mapping={"status": "started", "jk_started_at": 1})
        client.close()
    fenced = replace(request, reason="lost reply", fence=frozenset({"rq"}))
    previous = set_dispatcher(dispatcher)
    try:
        with temporal.start_worker(["rq-messages"]):
            assert temporal.enqueue(fenced) is True
            if rq_copy == "queued":
                info = wait_for_job(request.job_id, timeout=20)
                assert (info.status, info.engine, info.reason) == (
                    JobStatus.SUCCEEDED,
                    "temporal",
                    "lost reply",
                )
                assert count(workdir, "fenced") == 1
            else:
                eventually(lambda: temporal.get(request.job_id) is None, 20)  # the run ended
                info = dispatcher.get(request.job_id)
                assert (info.status, info.engine) == (JobStatus.RUNNING, "rq")
                assert count(workdir, "fenced") == 0  # Temporal never ran the handler
    finally:
        set_dispatcher(previous)
        dispatcher.close()
