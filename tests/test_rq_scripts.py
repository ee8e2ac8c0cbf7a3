"""Fast unit tests of the RQ engine's Redis logic on fakeredis (real Redis: test_rq_engine)."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import fakeredis
import pytest

from jobkit import JobkitSettings
from jobkit.errors import JobNotFoundError
from jobkit_dispatch.engines import JobRequest
from jobkit_dispatch.engines.rq import RQEngine
from jobkit_engine import JobStatus


@pytest.fixture
def redis() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


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
