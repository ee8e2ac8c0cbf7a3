"""Fast unit tests of the RQ engine's Redis logic on fakeredis (real Redis: test_rq_engine)."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import pytest

from jobkit import JobkitSettings
from jobkit.errors import JobNotFoundError
from jobkit.queues import default_queues
from jobkit_dispatch.engines import JobRequest
from jobkit_dispatch.engines.rq import RQEngine, keys
from jobkit_dispatch.engines.rq.cancel import Cancellations
from jobkit_dispatch.engines.rq.codec import encode_error
from jobkit_dispatch.engines.rq.execute import Executor
from jobkit_dispatch.engines.rq.link import WorkerLink
from jobkit_engine import JobError, JobRegistry, JobStatus, ManualClock
from jobkit_engine.runtime import (
    DictStepMemo,
    Failed,
    Interrupted,
    MemoSteps,
    Outcome,
    RunAgain,
    Succeeded,
    Suspended,
    settle,
)


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def redis(server: fakeredis.FakeServer) -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=server)


@pytest.fixture
def link(server: fakeredis.FakeServer) -> WorkerLink:
    """A worker's side of the same fake Redis."""
    client = fakeredis.FakeAsyncRedis(server=server)
    return WorkerLink("w1", keys.QueueKeys("default"), JobkitSettings(), client)


@pytest.fixture
def engine(redis: fakeredis.FakeRedis) -> RQEngine:
    return RQEngine(redis, settings=JobkitSettings())


def request(**changes: object) -> JobRequest:
    base = {
        "job_id": uuid.uuid4().hex,
        "job_name": "tests.greet",
        "payload": {"name": "a"},
        "queue": "default",
        "max_attempts": 3,
        "reason": "rq",
    }
    return JobRequest(**{**base, **changes})  # type: ignore[arg-type]


def test_an_id_is_enqueued_once(engine: RQEngine, redis: fakeredis.FakeRedis) -> None:
    r = request()
    assert engine.enqueue(r) is True
    assert engine.enqueue(r) is False
    assert redis.lrange("rq:queue:default", 0, -1) == [r.job_id.encode()]
    info = engine.get(r.job_id)
    assert info is not None
    assert (info.status, info.job_name, info.reason, info.max_attempts) == (
        JobStatus.QUEUED,
        "tests.greet",
        "rq",
        3,
    )


def test_a_delayed_job_waits_in_rqs_scheduled_registry(
    engine: RQEngine, redis: fakeredis.FakeRedis
) -> None:
    r = request(delay=timedelta(hours=1))
    engine.enqueue(r)
    assert redis.llen("rq:queue:default") == 0
    score = redis.zscore("rq:scheduled:default", r.job_id)
    info = engine.get(r.job_id)
    assert info is not None and info.scheduled_for is not None
    assert info.status == JobStatus.SCHEDULED
    assert score == pytest.approx(info.scheduled_for.timestamp())


def test_cancel_in_each_state(engine: RQEngine, redis: fakeredis.FakeRedis) -> None:
    queued, delayed, running = request(), request(delay=timedelta(minutes=1)), request()
    for r in (queued, delayed, running):
        engine.enqueue(r)
    redis.hset(f"rq:job:{running.job_id}", "status", "started")
    pubsub = redis.pubsub()
    pubsub.subscribe("jobkit:cancel")
    assert [engine.cancel(r.job_id) for r in (queued, delayed, running)] == [True, True, True]
    assert redis.llen("rq:queue:default") == 1  # only `running`'s id was left in the list
    assert redis.zcard("rq:scheduled:default") == 0
    assert engine.get(queued.job_id).status == JobStatus.CANCELLED  # type: ignore[union-attr]
    accepted = float(redis.hget(f"rq:job:{running.job_id}", "jk_cancel"))
    assert accepted == pytest.approx(time.time(), abs=5)  # when the cancel was accepted
    messages = [
        m for m in iter(lambda: pubsub.get_message(timeout=0.1), None) if m["type"] == "message"
    ]
    assert [m["data"] for m in messages] == [running.job_id.encode()]
    assert engine.cancel(running.job_id) is True  # still running: the first time is kept
    assert float(redis.hget(f"rq:job:{running.job_id}", "jk_cancel")) == accepted
    assert engine.cancel(queued.job_id) is False
    with pytest.raises(JobNotFoundError):
        engine.cancel("no-such-job")


def test_unknown_id_reads_as_none(engine: RQEngine) -> None:
    assert engine.get("no-such-job") is None


async def _started(engine: RQEngine, link: WorkerLink) -> str:
    """A job a worker popped and started, as START leaves it."""
    r = request()
    engine.enqueue(r)
    q = link.keys
    await link.redis.lmove(q.queue, q.claimed)
    now = time.time()
    flat = await link.start(
        keys=[keys.job_key(r.job_id), q.claimed, q.running],
        args=[r.job_id, now, now + 60, link.name, "2026-01-01T00:00:00.000000Z"],
    )
    assert flat
    return r.job_id


def _executor(link: WorkerLink) -> Executor:
    cancels = Cancellations({}, heartbeat=5)
    return Executor(link, cancels, lease=60, registry=JobRegistry(), queues=default_queues)


_ERROR = JobError("ValueError", "boom")
OUTCOMES: dict[str, Outcome] = {
    "succeeded": Succeeded("the result"),
    "failed": Failed(_ERROR, None),
    "retry": Failed(_ERROR, timedelta(seconds=30)),
    "sleep": Suspended(datetime(2100, 1, 1, tzinfo=UTC)),
    "interrupted": Interrupted(),
}


@pytest.mark.parametrize("outcome", OUTCOMES.values(), ids=OUTCOMES.keys())
async def test_a_cancel_accepted_while_running_wins_over_every_outcome(
    engine: RQEngine, redis: fakeredis.FakeRedis, link: WorkerLink, outcome: Outcome
) -> None:
    """The worker has not heard of the cancel (its `settle` sees no cancel): FINISH, the
    atomic write, still lets the cancel win."""
    job_id = await _started(engine, link)
    assert engine.cancel(job_id) is True  # running: only flagged
    await _executor(link).finish(job_id, outcome)
    info = engine.get(job_id)
    assert info is not None
    assert (info.status, info.result, info.error) == (JobStatus.CANCELLED, None, None)
    assert redis.hget(keys.job_key(job_id), "jk_result") is None
    q = link.keys
    assert redis.zscore(q.canceled, job_id) is not None
    for elsewhere in (q.finished, q.failed, q.scheduled, q.running):
        assert redis.zscore(elsewhere, job_id) is None
    assert redis.lrange(q.queue, 0, -1) == []
    assert redis.ttl(keys.job_key(job_id)) == pytest.approx(JobkitSettings().failure_ttl, abs=5)


async def test_without_a_cancel_the_ending_is_recorded(engine: RQEngine, link: WorkerLink) -> None:
    job_id = await _started(engine, link)
    await _executor(link).finish(job_id, OUTCOMES["succeeded"])
    info = engine.get(job_id)
    assert info is not None
    assert (info.status, info.result) == (JobStatus.SUCCEEDED, "the result")
    assert engine.cancel(job_id) is False  # it had already finished


RAN: list[str] = []


def step(name: str) -> str:
    RAN.append(name)
    return name


async def test_no_step_function_runs_once_a_cancel_was_accepted(
    engine: RQEngine, redis: fakeredis.FakeRedis, link: WorkerLink
) -> None:
    job_id = await _started(engine, link)
    cancels = Cancellations({}, heartbeat=5)
    RAN.clear()
    memo = DictStepMemo({"done": "replayed"})
    steps = MemoSteps(
        memo,
        ManualClock(),
        timedelta(seconds=5),
        before_step=cancels.step_gate(link, job_id, keys.job_key(job_id)),
    )
    assert await steps.run("before", step, "before") == "before"
    assert engine.cancel(job_id) is True
    assert await steps.run("done", step, "done") == "replayed"  # a replay starts nothing
    with pytest.raises(asyncio.CancelledError):
        await steps.run("after", step, "after")
    assert RAN == ["before"]
    assert job_id in cancels  # so the worker ends the attempt cancelled, not requeued
    began = {
        k.decode().removeprefix(keys.step_began_prefix)
        for k in redis.hkeys(keys.job_key(job_id))
        if k.decode().startswith(keys.step_began_prefix)
    }
    assert began == {"before"}


async def test_recovery_of_a_cancelled_job_ends_it_cancelled(
    engine: RQEngine, redis: fakeredis.FakeRedis, link: WorkerLink
) -> None:
    job_id = await _started(engine, link)
    assert engine.cancel(job_id) is True
    q = link.keys
    redis.zadd(q.running, {job_id: time.time() - 1})  # its worker died: the lease ran out
    recovered = await link.recover(
        keys=[q.running, q.queue, q.failed, q.canceled, q.open],
        args=[
            time.time(),
            keys.job_key_prefix,
            '{"type": "AbandonedJobError"}',
            60,
            keys.attempt_field_prefix,
        ],
    )
    assert recovered == [job_id.encode()]
    info: Any = engine.get(job_id)
    assert (info.status, info.error) == (JobStatus.CANCELLED, None)
    assert redis.lrange(q.queue, 0, -1) == []


@pytest.mark.parametrize(
    ("attempts_left", "cancelled"), [(True, False), (False, False), (True, True), (False, True)]
)
async def test_crash_recovery_decides_as_the_lifecycle_core(
    engine: RQEngine,
    redis: fakeredis.FakeRedis,
    link: WorkerLink,
    attempts_left: bool,
    cancelled: bool,
) -> None:
    """RECOVER runs in Redis, where `settle` cannot: it must answer as `settle` does for an
    attempt abandoned by its worker — retried at once while attempts remain, failed when
    none do, cancelled when a cancel was accepted."""
    job_id = await _started(engine, link)
    key = keys.job_key(job_id)
    redis.hset(key, "jk_max_attempts", 3 if attempts_left else 1)
    if cancelled:
        assert engine.cancel(job_id) is True
    q = link.keys
    redis.zadd(q.running, {job_id: time.time() - 1})  # its worker died: the lease ran out
    abandoned = JobError("AbandonedJobError", "the worker running this job stopped")
    await link.recover(
        keys=[q.running, q.queue, q.failed, q.canceled, q.open],
        args=[
            time.time(),
            keys.job_key_prefix,
            encode_error(abandoned),
            60,
            keys.attempt_field_prefix,
        ],
    )
    now = datetime.now(UTC)
    expected = settle(
        Failed(abandoned, timedelta(0) if attempts_left else None),
        now=now,
        cancel_requested=cancelled,
    )
    info: Any = engine.get(job_id)
    if isinstance(expected, RunAgain):
        # Due at once: RQ puts it straight back on the queue, the failure in view.
        assert (expected.status, expected.at) == (JobStatus.SCHEDULED, now)
        assert (info.status, info.error) == (JobStatus.QUEUED, expected.error)
        assert redis.lrange(q.queue, 0, -1) == [job_id.encode()]
    else:
        assert info.status == expected.status
