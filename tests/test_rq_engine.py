"""What the RQ engine must survive: crashes, signals, hostile messages, a dead Redis."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Queue, Worker
from rq.job import Job
from rq.serializers import JSONSerializer

from jobkit import JobkitSettings
from jobkit.connection import get_redis
from jobkit.errors import EngineUnavailableError
from jobkit_dispatch import cancel_job, dispatch_job, get_job
from jobkit_dispatch.conformance._files import count, open_gate
from jobkit_dispatch.engines import JobRequest
from jobkit_dispatch.engines.rq import RQEngine, keys
from jobkit_dispatch.engines.rq.worker import RQWorker
from jobkit_dispatch.testing import RedisServer, use_engine, wait_for_job
from jobkit_dispatch.testing.redis_server import free_port
from jobkit_dispatch.testing.rq_worker import WorkerProcess
from jobkit_engine import JobInfo, JobStatus
from tests import rq_jobs

FAST = {"JOBKIT_WORKER_HEARTBEAT": "0.3", "JOBKIT_SLEEP_THRESHOLD": "1"}


@pytest.fixture
def client(jobkit_redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(jobkit_redis_server.url)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def _fresh_redis(client: redis.Redis) -> None:
    client.flushdb()


@pytest.fixture
def engine(jobkit_redis_server: RedisServer) -> Iterator[RQEngine]:
    settings = JobkitSettings(redis_url=jobkit_redis_server.url)
    engine = RQEngine(get_redis(settings=settings), settings=settings)
    with use_engine(engine):
        yield engine


def worker(server: RedisServer, queue: str, tmp_path: Path, **env: str) -> WorkerProcess:
    return WorkerProcess(
        server.url,
        [queue],
        ["tests.rq_jobs"],
        env={**FAST, **env},
        log_path=tmp_path / f"worker-{uuid.uuid4().hex[:4]}.log",
    )


def _status(status: JobStatus) -> Callable[[JobInfo], bool]:
    return lambda info: info.status == status


def test_a_dispatched_job_is_a_plain_rq_job_with_a_json_payload(
    engine: RQEngine, client: redis.Redis, jobkit_redis_server: RedisServer, tmp_path: Path
) -> None:
    d = dispatch_job(rq_jobs.ok, {"workdir": str(tmp_path)})
    job = Job.fetch(d.job_id, connection=client, serializer=JSONSerializer)
    assert (job.func_name, job.origin, job.get_status()) == ("rqtest.ok", "rq-messages", "queued")
    assert job.args == [{"workdir": str(tmp_path), "gate": "go"}]
    raw = zlib.decompress(client.hget(f"rq:job:{d.job_id}", "data"))
    assert json.loads(raw)[0] == "rqtest.ok"  # JSON on the wire, never pickle
    with worker(jobkit_redis_server, "rq-messages", tmp_path):
        assert [w.name for w in Worker.all(queue=Queue("rq-messages", connection=client))]
        assert wait_for_job(d.job_id).status == JobStatus.SUCCEEDED
    assert (
        Job.fetch(d.job_id, connection=client, serializer=JSONSerializer).get_status() == "finished"
    )


def test_hostile_and_corrupt_messages_fail_alone(
    engine: RQEngine, client: redis.Redis, jobkit_redis_server: RedisServer, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    queue = Queue("rq-messages", connection=client, serializer=JSONSerializer)
    arbitrary = queue.enqueue("os.system", f"touch {marker}")  # names a function, not a job
    pickled = Queue("rq-messages", connection=client).enqueue("os.system", f"touch {marker}")
    client.hset(
        "rq:job:garbage",
        mapping={"status": "queued", "data": b"\x00not zlib", "origin": "rq-messages"},
    )
    client.rpush("rq:queue:rq-messages", "garbage", "no-such-hash")
    good = dispatch_job(rq_jobs.ok, {"workdir": str(tmp_path)})
    # No grace for jobs it does not know: a name nobody registers fails at once.
    with worker(jobkit_redis_server, "rq-messages", tmp_path, JOBKIT_UNKNOWN_JOB_GRACE="0"):
        assert wait_for_job(good.job_id).status == JobStatus.SUCCEEDED  # the worker went on
    errors = {
        name: json.loads(client.hget(f"rq:job:{job_id}", "jk_error"))["type"]
        for name, job_id in (
            ("arbitrary", arbitrary.id),
            ("pickled", pickled.id),
            ("garbage", "garbage"),
        )
    }
    assert errors == {
        "arbitrary": "UnknownJobError",
        "pickled": "CorruptJobError",
        "garbage": "CorruptJobError",
    }
    for job_id in (arbitrary.id, pickled.id, "garbage"):
        assert client.hget(f"rq:job:{job_id}", "status") == b"failed"
    assert not marker.exists()


@pytest.mark.slow
def test_a_worker_killed_mid_job_is_recovered_without_rerunning_steps(
    engine: RQEngine, jobkit_redis_server: RedisServer, tmp_path: Path
) -> None:
    workdir = str(tmp_path)
    d = dispatch_job(rq_jobs.crashy, {"workdir": workdir})
    first = worker(jobkit_redis_server, "rq-crash", tmp_path).start()
    wait_for_job(d.job_id, lambda i: count(workdir, "waiting-1") == 1)
    first.kill()
    killed_at = time.monotonic()
    with worker(jobkit_redis_server, "rq-crash", tmp_path):
        wait_for_job(d.job_id, lambda i: count(workdir, "waiting-2") == 1, timeout=10)
        recovered_in = time.monotonic() - killed_at
        open_gate(workdir, "go")
        info = wait_for_job(d.job_id)
    assert (info.status, info.result, info.attempts) == (
        JobStatus.SUCCEEDED,
        ["first", "second"],
        2,
    )
    assert (count(workdir, "first"), count(workdir, "second")) == (1, 1)
    assert recovered_in < 3 * 0.3 + 0.3 + 2.5  # lease + one housekeeping pass + worker start


def test_sigterm_finishes_the_running_job_and_takes_no_more(
    engine: RQEngine, jobkit_redis_server: RedisServer, tmp_path: Path
) -> None:
    workdir = str(tmp_path)
    running = dispatch_job(rq_jobs.held, {"workdir": workdir})
    waiting = dispatch_job(rq_jobs.held, {"workdir": workdir, "gate": "later"})
    process = worker(jobkit_redis_server, "rq-shutdown", tmp_path).start()
    wait_for_job(running.job_id, _status(JobStatus.RUNNING))
    process.signal(signal.SIGTERM)
    open_gate(workdir, "go")
    assert process.wait(15) == 0
    assert get_job(running.job_id).status == JobStatus.SUCCEEDED
    assert get_job(waiting.job_id).status == JobStatus.QUEUED


def test_a_second_signal_aborts_and_the_job_runs_again_later(
    engine: RQEngine, jobkit_redis_server: RedisServer, tmp_path: Path
) -> None:
    workdir = str(tmp_path)
    d = dispatch_job(rq_jobs.held, {"workdir": workdir})
    process = worker(jobkit_redis_server, "rq-shutdown", tmp_path).start()
    wait_for_job(d.job_id, lambda i: count(workdir, "waiting-1") == 1)
    process.signal(signal.SIGTERM)
    process.signal(signal.SIGINT)
    assert process.wait(15) == 0
    info = get_job(d.job_id)
    assert (info.status, info.attempts) == (JobStatus.QUEUED, 0)
    assert process.log_path is not None
    logged = f"job {d.job_id} interrupted: rqtest.held queue=rq-shutdown engine=rq attempt=1"
    assert process.log_path.read_text().count(logged) == 1
    open_gate(workdir, "go")
    with worker(jobkit_redis_server, "rq-shutdown", tmp_path):
        info = wait_for_job(d.job_id)
    assert (info.status, info.attempts) == (JobStatus.SUCCEEDED, 1)
    assert count(workdir, "first") == 1


def test_an_abort_the_handler_lost_is_delivered_again(
    engine: RQEngine, jobkit_redis_server: RedisServer, tmp_path: Path
) -> None:
    """The handler loses the abort's interruption (see `rq_jobs.stubborn`): the worker
    interrupts it again on a heartbeat, hands the job back and exits, instead of waiting
    for the job to end by itself."""
    workdir = str(tmp_path)
    d = dispatch_job(rq_jobs.stubborn, {"workdir": workdir})
    process = worker(jobkit_redis_server, "rq-messages", tmp_path).start()
    wait_for_job(d.job_id, lambda i: i.progress is not None)
    process.signal(signal.SIGTERM)
    process.signal(signal.SIGINT)
    assert process.wait(15) == 0
    info = get_job(d.job_id)
    assert (info.status, info.attempts) == (JobStatus.QUEUED, 0)
    assert count(workdir, "finished") == 0


def test_a_cancellation_the_handler_lost_is_delivered_again(
    engine: RQEngine, jobkit_redis_server: RedisServer, tmp_path: Path
) -> None:
    """The handler swallows the first cancellation (see `rq_jobs.stubborn`) and waits on,
    outside a step: the worker interrupts it again on a heartbeat instead of letting it
    run to completion."""
    workdir = str(tmp_path)
    d = dispatch_job(rq_jobs.stubborn, {"workdir": workdir})
    with worker(jobkit_redis_server, "rq-messages", tmp_path):
        wait_for_job(d.job_id, lambda i: i.progress is not None)
        assert cancel_job(d.job_id) is True
        info = wait_for_job(d.job_id, timeout=5)
    assert info.status == JobStatus.CANCELLED
    assert count(workdir, "finished") == 0


def test_no_step_starts_after_a_cancel_returned_true(
    engine: RQEngine, jobkit_redis_server: RedisServer, tmp_path: Path
) -> None:
    """The handler swallows the cancellation and goes on to a step at once, inside an
    `except Exception` (see `rq_jobs.swallows`); no heartbeat comes to interrupt it again.
    The step is refused before its function runs, and the job ends cancelled."""
    workdir = str(tmp_path)
    d = dispatch_job(rq_jobs.swallows, {"workdir": workdir})
    process = WorkerProcess(
        jobkit_redis_server.url,
        ["rq-messages"],
        ["tests.rq_jobs"],
        env={"JOBKIT_WORKER_HEARTBEAT": "60"},
        log_path=tmp_path / "worker.log",
    )
    with process:
        wait_for_job(d.job_id, lambda i: i.progress is not None)
        assert cancel_job(d.job_id) is True
        info = wait_for_job(d.job_id, timeout=5)
    assert (info.status, info.result) == (JobStatus.CANCELLED, None)
    assert count(workdir, "after") == 0
    assert "step 'after' does not start" in process.log_path.read_text()  # type: ignore[union-attr]


async def test_a_job_cancelled_before_its_handler_starts_never_runs(
    engine: RQEngine,
    client: redis.Redis,
    jobkit_redis_server: RedisServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The cancellation lands after the job started (status `started`) and before its
    handler did, and the worker hears it there; no heartbeat comes to catch it later."""
    settings = JobkitSettings(redis_url=jobkit_redis_server.url, worker_heartbeat=60)
    rq_worker = RQWorker("rq-messages", settings=settings)
    heard = asyncio.Event()
    cancel_local = rq_worker.cancels.cancel_local

    def hear(job_id: str) -> None:
        cancel_local(job_id)
        heard.set()

    monkeypatch.setattr(rq_worker.cancels, "cancel_local", hear)
    listening = _subscribers(client)
    running = asyncio.create_task(rq_worker.run())
    await asyncio.to_thread(_wait_for_subscribers, client, listening + 1)
    assert rq_worker.link is not None
    start = rq_worker.link.start
    request = JobRequest(
        uuid.uuid4().hex, rq_jobs.ok.name, {"workdir": str(tmp_path)}, "rq-messages"
    )

    async def start_then_cancel(**kwargs: Any) -> Any:
        flat = await start(**kwargs)
        assert await asyncio.to_thread(engine.cancel, request.job_id) is True
        await heard.wait()
        return flat

    monkeypatch.setattr(rq_worker.link, "start", start_then_cancel)
    assert engine.enqueue(request)
    try:
        info = await asyncio.to_thread(wait_for_job, request.job_id, timeout=5)
    finally:
        rq_worker.stop()
        await running
    assert info.status == JobStatus.CANCELLED
    assert count(str(tmp_path), "ok") == 0


def _subscribers(client: redis.Redis) -> int:
    return int(dict(client.pubsub_numsub(keys.cancel_channel))[keys.cancel_channel.encode()])


def _wait_for_subscribers(client: redis.Redis, wanted: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while _subscribers(client) < wanted:
        assert time.monotonic() < deadline, "the worker never listened for cancellations"
        time.sleep(0.01)


def test_every_job_slot_has_a_thread_for_its_synchronous_steps(
    engine: RQEngine, jobkit_redis_server: RedisServer, tmp_path: Path
) -> None:
    """A step let start runs at once, not after other jobs' steps: otherwise it could
    start long after a cancel of its job had returned True."""
    workdir = str(tmp_path)
    ids = [dispatch_job(rq_jobs.meet_all, {"workdir": workdir}).job_id for _ in range(rq_jobs.WIDE)]
    with worker(jobkit_redis_server, "rq-wide", tmp_path):
        infos = [wait_for_job(job_id, timeout=20) for job_id in ids]
    assert [(i.status, i.result) for i in infos] == [(JobStatus.SUCCEEDED, True)] * rq_jobs.WIDE


def test_a_dead_redis_fails_fast_with_a_clear_error() -> None:
    settings = JobkitSettings(redis_url=f"redis://:s3cret@127.0.0.1:{free_port()}/0")
    engine = RQEngine(get_redis(settings=settings), settings=settings)
    request = JobRequest(uuid.uuid4().hex, "rqtest.ok", {"workdir": "."}, "rq-messages")
    started = time.monotonic()
    with pytest.raises(EngineUnavailableError) as caught:
        engine.enqueue(request)
    assert time.monotonic() - started < 2
    assert "127.0.0.1" in str(caught.value)
    assert "s3cret" not in str(caught.value)


@pytest.mark.slow
def test_a_worker_rides_out_a_redis_restart(tmp_path: Path) -> None:
    workdir = str(tmp_path)
    with RedisServer(appendonly=True) as server:
        settings = JobkitSettings(redis_url=server.url)
        engine = RQEngine(get_redis(settings=settings), settings=settings)
        with use_engine(engine), worker(server, "rq-shutdown", tmp_path) as process:
            running = dispatch_job(rq_jobs.held, {"workdir": workdir})
            wait_for_job(running.job_id, lambda i: count(workdir, "waiting-1") == 1)
            queued = dispatch_job(rq_jobs.held, {"workdir": workdir, "gate": "next"})
            server.stop()
            _wait_for_log(process, "Redis unavailable")  # the worker saw the outage
            assert process.process is not None and process.process.poll() is None
            server.start()
            _wait_for_log(process, "Redis is back")
            open_gate(workdir, "go")
            open_gate(workdir, "next")
            first, second = wait_for_job(running.job_id), wait_for_job(queued.job_id)
    assert (first.status, first.attempts) == (JobStatus.SUCCEEDED, 1)
    assert (second.status, second.attempts) == (JobStatus.SUCCEEDED, 1)
    assert (count(workdir, "first"), count(workdir, "second")) == (2, 2)


def _wait_for_log(process: WorkerProcess, text: str, timeout: float = 10) -> None:
    assert process.log_path is not None
    deadline = time.monotonic() + timeout
    while text not in process.log_path.read_text():
        assert time.monotonic() < deadline, f"{text!r} never logged"
        time.sleep(0.05)


def test_one_worker_command_serves_several_queues_in_their_own_processes(
    engine: RQEngine, jobkit_redis_server: RedisServer, client: redis.Redis, tmp_path: Path
) -> None:
    workdir = str(tmp_path)
    held = dispatch_job(rq_jobs.held, {"workdir": workdir})
    quick = dispatch_job(rq_jobs.ok, {"workdir": workdir})
    process = WorkerProcess(
        jobkit_redis_server.url,
        ["rq-shutdown", "rq-messages"],
        ["tests.rq_jobs"],
        env=FAST,
        log_path=tmp_path / "w.log",
    ).start()
    wait_for_job(held.job_id, _status(JobStatus.RUNNING))
    assert wait_for_job(quick.job_id).status == JobStatus.SUCCEEDED  # not stuck behind `held`
    pids = {int(client.hget(key, "pid")) for key in client.smembers("rq:workers")}
    assert len(pids) == 2
    assert process.pid not in pids
    process.signal(signal.SIGTERM)
    open_gate(workdir, "go")
    assert process.wait(15) == 0
    assert get_job(held.job_id).status == JobStatus.SUCCEEDED
    assert client.scard("rq:workers") == 0
