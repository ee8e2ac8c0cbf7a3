"""Fast checks of the RQ operator scripts on fakeredis (real Redis: test_rq_recovery):
listing ties and damaged records, attempt records, retry, purge batches, trimming."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import pytest

from jobkit import JobkitSettings
from jobkit.queues import default_queues
from jobkit_dispatch.engines import JobRequest
from jobkit_dispatch.engines.recovery import JobPage, JobQuery
from jobkit_dispatch.engines.rq import RQEngine, keys, recovery
from jobkit_dispatch.engines.rq.cancel import Cancellations
from jobkit_dispatch.engines.rq.codec import ClaimedJob, decode_claimed, encode_error
from jobkit_dispatch.engines.rq.execute import Executor
from jobkit_dispatch.engines.rq.link import WorkerLink
from jobkit_dispatch.engines.rq.scripts_ops import TRIM
from jobkit_engine import JobError, JobRegistry, JobStatus
from jobkit_engine.runtime import Failed, Interrupted, Outcome, Succeeded, Suspended

Q = keys.QueueKeys("default")
ERROR = JobError("ValueError", "boom", "Traceback: boom")


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def redis(server: fakeredis.FakeServer) -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=server)


@pytest.fixture
def engine(redis: fakeredis.FakeRedis) -> RQEngine:
    return RQEngine(redis, settings=JobkitSettings())


@pytest.fixture
def link(server: fakeredis.FakeServer) -> WorkerLink:
    client = fakeredis.FakeAsyncRedis(server=server)
    return WorkerLink("w1", Q, JobkitSettings(), client)


def _request(**changes: Any) -> JobRequest:
    base = {"job_id": uuid.uuid4().hex, "job_name": "tests.greet", "payload": {"n": 1}}
    return JobRequest(**{**base, "queue": "default", "max_attempts": 3, **changes})


async def _started(engine: RQEngine, link: WorkerLink) -> ClaimedJob:
    r = _request()
    engine.enqueue(r)
    await link.redis.lmove(Q.queue, Q.claimed)
    now = time.time()
    flat = await link.start(
        keys=[keys.job_key(r.job_id), Q.claimed, Q.running],
        args=[r.job_id, now, now + 60, link.name, "2026-01-01T00:00:00.000000Z"],
    )
    return decode_claimed(r.job_id, flat, link.redis)


async def _finish(link: WorkerLink, claimed: ClaimedJob, outcome: Outcome) -> None:
    executor = Executor(
        link,
        Cancellations({}, heartbeat=5),
        lease=60,
        registry=JobRegistry(),
        queues=default_queues,
    )
    await executor.finish(claimed.job_id, outcome, claimed)


def _walk(engine: RQEngine, query: JobQuery) -> list[str]:
    ids: list[str] = []
    page = JobPage((), None)
    while True:
        page = engine.list_jobs(query)
        ids += [info.job_id for info in page.jobs]
        if page.frontier is None:
            return ids
        query = JobQuery(**{**query.__dict__, "after": page.frontier})


def test_open_jobs_created_in_the_same_microsecond_list_by_id(
    engine: RQEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("jobkit_dispatch.engines.rq.engine.micro_time", lambda: 1_800_000_000.5)
    ids = [_request().job_id for _ in range(7)]
    for job_id in ids:
        engine.enqueue(_request(job_id=job_id))
    assert _walk(engine, JobQuery(limit=2)) == sorted(ids, reverse=True)


async def test_jobs_ended_in_the_same_microsecond_list_by_id_across_registries(
    engine: RQEngine, link: WorkerLink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("jobkit_dispatch.engines.rq.execute.micro_time", lambda: time.time() // 1)
    outcomes = [Succeeded(1), Failed(ERROR, None), Succeeded(2), Failed(ERROR, None)]
    ended = []
    for outcome in outcomes:
        claimed = await _started(engine, link)
        await _finish(link, claimed, outcome)
        ended.append(claimed.job_id)
    cancelled = _request()
    engine.enqueue(cancelled)
    engine.cancel(cancelled.job_id)
    everything = _walk(engine, JobQuery(limit=2))
    assert everything[0] == cancelled.job_id  # cancelled last: listed first
    assert everything[1:] == sorted(ended, reverse=True)  # at one time: by id, descending
    assert _walk(engine, JobQuery(status=JobStatus.FAILED, limit=1)) == sorted(
        ended[1::2], reverse=True
    )


def test_a_damaged_record_is_skipped_not_fatal(
    engine: RQEngine, redis: fakeredis.FakeRedis
) -> None:
    good, bad = _request(), _request()
    engine.enqueue(good)
    engine.enqueue(bad)
    redis.hset(keys.job_key(bad.job_id), "jk_attempts", "many")
    assert _walk(engine, JobQuery()) == [good.job_id]


OUTCOMES: dict[str, Outcome] = {
    "succeeded": Succeeded("ok"),
    "failed": Failed(ERROR, None),
    "retry": Failed(ERROR, timedelta(seconds=30)),
    "sleep": Suspended(datetime(2100, 1, 1, tzinfo=UTC)),
    "interrupted": Interrupted(),
}


@pytest.mark.parametrize("cancel", [False, True], ids=["", "cancel-wins"])
@pytest.mark.parametrize("name", OUTCOMES)
async def test_finish_records_an_attempt_that_is_retried(
    engine: RQEngine, link: WorkerLink, redis: fakeredis.FakeRedis, name: str, cancel: bool
) -> None:
    """Only a retried attempt gets a record of its own; the one that ends the job (or a
    cancel that wins) is told by the job's fields, as `describe` reads them."""
    claimed = await _started(engine, link)
    if cancel:
        assert engine.cancel(claimed.job_id) is True
    await _finish(link, claimed, OUTCOMES[name])
    raw = redis.hget(keys.job_key(claimed.job_id), f"{keys.attempt_field_prefix}0:1")
    if name != "retry" or cancel:
        assert raw is None
    else:
        record = json.loads(raw)
        assert (record["number"], record["outcome"]) == (1, "retrying")
        assert record["started"] == claimed.attempt_started
        assert record["started"] <= record["finished"] <= time.time()
        assert record["error"] == {
            "type": "ValueError",
            "message": "boom",
            "traceback": "Traceback: boom",
        }
    detail = engine.describe(claimed.job_id)
    assert detail is not None
    expected = {"succeeded": "succeeded", "failed": "failed", "retry": "retrying"}
    outcome = "cancelled" if cancel else expected.get(name, "running")
    if name == "interrupted" and not cancel:
        assert detail.attempts == ()  # back on the queue: the attempt did not count
        return
    [attempt] = detail.attempts
    assert (attempt.number, attempt.outcome) == (1, outcome)
    assert (attempt.error == ERROR) == (outcome in ("failed", "retrying"))


@pytest.mark.parametrize(
    ("attempts", "cancel", "outcome"),
    [(3, False, "retrying"), (1, False, "failed"), (3, True, "cancelled")],
)
async def test_recovery_records_the_lost_attempt(
    engine: RQEngine,
    link: WorkerLink,
    redis: fakeredis.FakeRedis,
    attempts: int,
    cancel: bool,
    outcome: str,
) -> None:
    claimed = await _started(engine, link)
    redis.hset(keys.job_key(claimed.job_id), "jk_max_attempts", attempts)
    if cancel:
        engine.cancel(claimed.job_id)
    redis.zadd(Q.running, {claimed.job_id: time.time() - 1})  # the lease ran out
    lost = JobError("AbandonedJobError", "gone")
    await link.recover(
        keys=[Q.running, Q.queue, Q.failed, Q.canceled, Q.open],
        args=[time.time(), keys.job_key_prefix, encode_error(lost), 60, keys.attempt_field_prefix],
    )
    detail = engine.describe(claimed.job_id)
    assert detail is not None
    assert [(a.number, a.outcome) for a in detail.attempts] == [(1, outcome)]
    assert (detail.attempts[0].error is None) == cancel
    still_open = redis.zscore(Q.open, claimed.job_id) is not None
    assert still_open == (outcome == "retrying")


async def test_retry_keeps_the_memo_unless_from_scratch(
    engine: RQEngine, link: WorkerLink, redis: fakeredis.FakeRedis
) -> None:
    for from_scratch in (False, True):
        claimed = await _started(engine, link)
        key = keys.job_key(claimed.job_id)
        steps = {"jk_step:a": "1", "jk_began:a": "1.0", "jk_saved:a": "2.0", "jk_began:b": "3.0"}
        redis.hset(key, mapping=steps)
        engine.cancel(claimed.job_id)  # running: flagged, ends cancelled
        await _finish(link, claimed, Failed(ERROR, None))
        assert redis.ttl(key) > 0 and redis.zscore(Q.canceled, claimed.job_id)
        info = engine.retry(claimed.job_id, from_scratch=from_scratch)
        assert (info.status, info.attempts, info.error, info.finished_at) == (
            JobStatus.QUEUED,
            0,
            None,
            None,
        )
        fields = {k.decode() for k in redis.hkeys(key)}
        assert (set(steps) <= fields) is not from_scratch
        assert not fields & set(steps) if from_scratch else True
        assert "jk_cancel" not in fields and redis.hget(key, "jk_retries") == b"1"
        assert redis.ttl(key) == -1 and redis.zscore(Q.canceled, claimed.job_id) is None
        created = engine.get(claimed.job_id).created_at  # type: ignore[union-attr]
        assert redis.zscore(Q.open, claimed.job_id) == round(created.timestamp() * 1e6)
        assert redis.lrange(Q.queue, 0, -1) == [claimed.job_id.encode()]
        redis.delete(Q.queue)  # out of the way of the next round's start


def test_purge_goes_in_batches(
    engine: RQEngine, redis: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recovery, "PURGE_BATCH", 3)
    ids = []
    for _ in range(10):
        r = _request()
        engine.enqueue(r)
        engine.cancel(r.job_id)
        ids.append(r.job_id)
    redis.zadd(Q.canceled, {"expired-already": time.time() + 60})  # no record: not counted
    assert engine.purge("default", JobStatus.CANCELLED) == 10
    assert redis.zcard(Q.canceled) == 0
    assert all(engine.get(job_id) is None for job_id in ids)


def test_trim_drops_expired_registry_entries_a_bounded_batch_at_a_time(
    redis: fakeredis.FakeRedis,
) -> None:
    now = time.time()
    redis.zadd(Q.finished, {f"old{i}": now - 10 - i for i in range(5)} | {"live": now + 60})
    redis.zadd(Q.failed, {"old": now - 1})
    trim = redis.register_script(TRIM)
    assert trim(keys=[Q.finished, Q.failed, Q.canceled], args=[now, 3]) == 4
    assert trim(keys=[Q.finished, Q.failed, Q.canceled], args=[now, 3]) == 2
    assert redis.zrange(Q.finished, 0, -1) == [b"live"] and redis.zcard(Q.failed) == 0


async def test_a_resumed_attempt_keeps_when_it_first_began(
    engine: RQEngine, link: WorkerLink, redis: fakeredis.FakeRedis
) -> None:
    claimed = await _started(engine, link)
    key = keys.job_key(claimed.job_id)
    assert not redis.hexists(key, "jk_attempt_started")  # one execution: jk_started_at says
    await _finish(link, claimed, Suspended(datetime.now(UTC) - timedelta(seconds=1)))
    await link.promote(keys=[Q.scheduled, Q.queue], args=[time.time(), 10, keys.job_key_prefix])
    await link.redis.lmove(Q.queue, Q.claimed)
    later = time.time() + 5
    flat = await link.start(
        keys=[key, Q.claimed, Q.running],
        args=[claimed.job_id, later, later + 60, link.name, "2026-01-01T00:00:00.000000Z"],
    )
    resumed = decode_claimed(claimed.job_id, flat, link.redis)
    assert (resumed.attempt, resumed.attempt_started) == (1, claimed.attempt_started)
    await _finish(link, resumed, Failed(ERROR, None))
    detail = engine.describe(claimed.job_id)
    assert detail is not None
    assert detail.info.started_at.timestamp() == pytest.approx(later)  # type: ignore[union-attr]
    [attempt] = detail.attempts
    first = claimed.attempt_started
    assert attempt.started_at.timestamp() == pytest.approx(first)  # type: ignore[union-attr]
