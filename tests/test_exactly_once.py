"""Exactly once across engines, with real Redis and the Temporal dev server.

The fault that matters here is a lost reply: an enqueue that Redis applied but whose answer
never came back. The dispatcher cannot tell it from a failure, so the job goes to Temporal
while a copy may sit in Redis; every job's side effect is counted to show it runs once.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
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
from jobkit_dispatch import Dispatched, Dispatcher, idempotent_job_id, set_dispatcher
from jobkit_dispatch.conformance._files import count, open_gate
from jobkit_dispatch.engines import JobRequest
from jobkit_dispatch.engines.rq.scripts import ENQUEUE
from jobkit_dispatch.engines.temporal import TemporalEngine
from jobkit_dispatch.testing import RedisServer, wait_for_job
from jobkit_dispatch.testing.rq_worker import WorkerProcess
from jobkit_dispatch.testing.temporal_server import TemporalDevServer
from jobkit_engine import JobStatus
from tests import jobs, rq_jobs
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
        # At least 40 dispatches, and more until enough replies were lost: after each lost
        # reply the circuit opens for a moment and the next dispatches skip Redis, so how
        # many enqueues a given number of dispatches makes depends on the box's load.
        for i in itertools.count():
            if (i >= 40 and lose.lost >= 5) or i >= 200:
                break
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


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_key_an_rq_worker_started_is_returned_when_rq_has_no_worker_now(
    redis_server: RedisServer, tmp_path: Path, flavour: str
) -> None:
    """RQ answers but has no live worker, so the job would go to Temporal (here hung): the
    dispatcher first asks RQ about the key, finds the job an RQ worker started, and
    returns it; Temporal is never asked, and nothing runs a second time."""
    payload = {"workdir": str(tmp_path), "name": "keyed"}
    job_id = idempotent_job_id(rq_jobs.count_slowly.name, "k")
    with hung_temporal() as address:
        dispatcher = Dispatcher(settings=settings(redis_server.url, address))
        rq = dispatcher.engine("rq")
        request = JobRequest(job_id, rq_jobs.count_slowly.name, payload, "rq-messages")
        assert rq.enqueue(replace(request, reason="rq")) is True
        client = redis.Redis.from_url(redis_server.url)
        client.hset(f"rq:job:{job_id}", mapping={"status": "started", "jk_started_at": 1})
        client.close()
        try:
            started = time.monotonic()
            if flavour == "sync":
                again = dispatcher.dispatch(rq_jobs.count_slowly, payload, idempotency_key="k")
            else:
                send = dispatcher.adispatch(rq_jobs.count_slowly, payload, idempotency_key="k")
                again = asyncio.run(send)
            elapsed = time.monotonic() - started
        finally:
            dispatcher.close()
    assert (again.job_id, again.engine, again.reason, again.created) == (job_id, "rq", "rq", False)
    assert elapsed < 1.0, f"the dispatch took {elapsed:.1f}s: Temporal was asked"


def warned_twice(records: list[logging.LogRecord], job_id: str) -> bool:
    return any("ran on both RQ and Temporal" in r.getMessage() and job_id in r.getMessage()
               for r in records)  # fmt: skip


@pytest.mark.slow
def test_keyed_jobs_run_at_once_while_redis_is_down_and_rq_is_told_once_it_is_back(
    redis_server: RedisServer,
    jobkit_temporal_server: TemporalDevServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before the outage, key "started" runs on RQ's one worker (held at a gate); keys
    "queued" and "cancelled" wait behind it. Redis dies. Dispatched again, with a new key
    "new" (and "instant", a job with no step, over before its hand-over has started), they
    run on Temporal at once and succeed while Redis is still down ("cancelled" is
    cancelled meanwhile). Redis comes back (AOF): the queued copies are withdrawn and
    never run, RQ's markers say where the jobs are, and a repeat dispatch returns the
    Temporal job. "started" ran on both engines (the outage's price): that is logged."""
    caplog.set_level(logging.WARNING, logger="temporalio.workflow")
    keys = ("started", "queued", "cancelled", "new")
    dirs = {key: tmp_path / key for key in (*keys, "later")}
    for path in dirs.values():
        path.mkdir()
        open_gate(str(path), "go")

    def send(key: str, gate: str = "go") -> Dispatched:
        work = {"workdir": str(dirs[key]), "gate": gate}
        return stack.dispatcher.dispatch(rq_jobs.held, work, idempotency_key=key)

    queues = ("rq-shutdown", "default")
    with running_stack(
        redis_server.url, redis_server, jobkit_temporal_server, tmp_path, queues
    ) as stack:
        started = send("started", gate="rq")
        wait_for_job(started.job_id, lambda i: i.status == JobStatus.RUNNING)
        before = [started, send("queued"), send("cancelled")]
        assert [d.engine for d in before] == ["rq", "rq", "rq"]
        redis_server.stop(kill=True)
        during = {key: send(key, "never" if key == "cancelled" else "go") for key in keys}
        assert stack.dispatcher.cancel(during["cancelled"].job_id) is True
        instant = stack.dispatcher.dispatch(jobs.loose, {"data": 1}, idempotency_key="instant")
        infos = {key: wait_for_job(d.job_id, timeout=30) for key, d in during.items()}
        assert wait_for_job(instant.job_id, timeout=30).result == 1
        with pytest.raises(redis.ConnectionError):  # it all happened while Redis was down
            redis.Redis.from_url(redis_server.url).ping()
        redis_server.start()  # the AOF brings back RQ's copies: one running, two queued
        client = redis.Redis.from_url(redis_server.url)
        for job_id in [*(during[k].job_id for k in ("queued", "cancelled", "new")), instant.job_id]:
            job_key = f"rq:job:{job_id}"
            eventually(lambda k=job_key: client.hget(k, "jk_moved_to") == b"temporal", 30)
        eventually(lambda: warned_twice(caplog.records, started.job_id), 30)
        assert client.lrange("rq:queue:rq-shutdown", 0, -1) == []  # withdrawn
        open_gate(str(dirs["started"]), "rq")
        assert wait_for_job(started.job_id, timeout=30).engine == "rq"
        # RQ's worker is free: a job dispatched now runs after anything still queued there.
        assert wait_for_job(send("later").job_id, timeout=30).engine == "rq"
        again = {key: send(key) for key in keys}
        temporal = stack.dispatcher.engine("temporal")
        assert temporal.get(f"{during['new'].job_id}/fence") is None  # not a job
        client.close()
    assert {(d.engine, d.reason.split(":")[0], d.created) for d in during.values()} == {
        ("temporal", "redis-unhealthy", True)
    }
    assert [during[k].job_id for k in keys[:3]] == [d.job_id for d in before]
    assert {k: (i.status, i.engine) for k, i in infos.items()} == {
        **{k: (JobStatus.SUCCEEDED, "temporal") for k in keys},
        "cancelled": (JobStatus.CANCELLED, "temporal"),
    }
    assert [(again[k].engine, again[k].created) for k in keys] == [
        ("rq", False),
        ("temporal", False),
        ("temporal", False),
        ("temporal", False),
    ]
    assert {key: count(str(path), "second") for key, path in dirs.items()} == {
        "started": 2,  # RQ's run, begun before the outage, and Temporal's
        "queued": 1,  # Temporal's only: RQ's copy was withdrawn
        "cancelled": 0,  # cancelled on Temporal, and RQ's copy withdrawn all the same
        "new": 1,
        "later": 1,
    }
    assert not warned_twice(caplog.records, during["queued"].job_id)


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
