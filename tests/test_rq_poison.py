"""Poison data on an RQ queue: real Redis, real workers. Each poison ends failed or
quarantined, with a log line, and the worker keeps serving (promotion included)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from jobkit import JobkitSettings
from jobkit.connection import get_redis
from jobkit.errors import CorruptJobError
from jobkit_dispatch import dispatch_job, get_job
from jobkit_dispatch.engines import JobRequest
from jobkit_dispatch.engines.rq import RQEngine, keys
from jobkit_dispatch.engines.rq.codec import job_mapping
from jobkit_dispatch.engines.rq.worker import RQWorker
from jobkit_dispatch.testing import RedisServer, use_engine, wait_for_job
from jobkit_dispatch.testing.rq_worker import WorkerProcess
from jobkit_engine import JobInfo, JobStatus
from tests import rq_jobs

QUEUE = "rq-messages"
Q = keys.QueueKeys(QUEUE)
FAST = {"JOBKIT_WORKER_HEARTBEAT": "0.3"}


@pytest.fixture
def client(jobkit_redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(jobkit_redis_server.url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def engine(jobkit_redis_server: RedisServer) -> Iterator[RQEngine]:
    settings = JobkitSettings(redis_url=jobkit_redis_server.url)
    engine = RQEngine(get_redis(settings=settings), settings=settings)
    with use_engine(engine):
        yield engine


def _job_hash(client: redis.Redis, job_id: str, **changes: Any) -> None:
    """A job hash as dispatch writes it, with `changes` (None deletes a field); not queued."""
    request = JobRequest(job_id, rq_jobs.ok.name, {"workdir": "/nowhere"}, QUEUE)
    fields = job_mapping(request, time.time(), 60, client)
    fields.update(changes)
    client.hset(keys.job_key(job_id), mapping={k: v for k, v in fields.items() if v is not None})


def _quarantined(client: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(record) for record in client.lrange(Q.quarantine, 0, -1)]


def _serves(tmp_path: Path) -> None:
    """The worker still takes jobs, and still promotes delayed ones."""
    now = dispatch_job(rq_jobs.ok, {"workdir": str(tmp_path)})
    later = dispatch_job(rq_jobs.ok, {"workdir": str(tmp_path)}, delay=timedelta(seconds=0.3))
    assert wait_for_job(now.job_id).status == JobStatus.SUCCEEDED
    assert wait_for_job(later.job_id).status == JobStatus.SUCCEEDED


def _poison_undecodable_id(client: redis.Redis) -> None:
    client.rpush(Q.queue, b"\xff\xfe")


def _poison_claimed_by_a_dead_worker(client: redis.Redis) -> None:
    """Before: the recovery loop of every worker died on it, without a log line."""
    client.rpush(Q.claimed, b"\xfa\xfb")


def _poison_in_scheduled_and_running_sets(client: redis.Redis) -> None:
    client.zadd(Q.scheduled, {b"\xfe\xff": 1, "scheduled-ghost": 1})
    client.zadd(Q.running, {"running-ghost": 1})


def _poison_no_job_hash(client: redis.Redis) -> None:
    client.rpush(Q.queue, "ghost")


QUARANTINE_CASES: dict[str, tuple[Callable[[redis.Redis], None], dict[str, int]]] = {
    # case: (the poison, the log lines it must cause, each exactly that often)
    "undecodable-id": (
        _poison_undecodable_id,
        {"job id b'\\xff\\xfe' is not valid UTF-8; quarantined": 1},
    ),
    "claimed-by-a-dead-worker": (
        _poison_claimed_by_a_dead_worker,
        {"job id b'\\xfa\\xfb' is not valid UTF-8; quarantined": 1},
    ),
    "scheduled-and-running-sets": (
        _poison_in_scheduled_and_running_sets,
        {
            "job id b'\\xfe\\xff' is not valid UTF-8; quarantined": 1,
            "job scheduled-ghost has no record (rq:job:scheduled-ghost); quarantined": 1,
            "job running-ghost has no record (rq:job:running-ghost); quarantined": 1,
        },
    ),
    "no-job-hash": (_poison_no_job_hash, {"job ghost has no record (rq:job:ghost)": 1}),
}
QUARANTINED_AS = {  # what each case leaves in the quarantine list
    "undecodable-id": {"hex:fffe"},
    "claimed-by-a-dead-worker": {"hex:fafb"},
    "scheduled-and-running-sets": {"hex:feff", "scheduled-ghost", "running-ghost"},
    "no-job-hash": {"ghost"},
}


@pytest.mark.parametrize("name", QUARANTINE_CASES)
def test_an_id_that_names_no_job_is_quarantined_and_the_worker_goes_on(
    engine: RQEngine,
    client: redis.Redis,
    jobkit_redis_server: RedisServer,
    tmp_path: Path,
    name: str,
) -> None:
    """Before: an id that is not UTF-8 killed the worker, and then the recovery loop of
    every later worker, with no log line (delayed jobs were never promoted again); an id
    with no hash, on the queue or in the scheduled or running set, vanished unlogged."""
    poison, lines = QUARANTINE_CASES[name]
    expected = QUARANTINED_AS[name]
    log = tmp_path / "worker.log"
    with WorkerProcess(jobkit_redis_server.url, [QUEUE], ["tests.rq_jobs"], env=FAST, log_path=log):
        poison(client)
        _serves(tmp_path)
        deadline = time.monotonic() + 10
        while len(_quarantined(client)) < len(expected):
            assert time.monotonic() < deadline, _quarantined(client)
            time.sleep(0.05)
    # The worker stopped cleanly: handing back what it held did not trip on anything.
    records = _quarantined(client)
    assert {r.get("id") or f"hex:{r['id_hex']}" for r in records} == expected
    assert {r["queue"] for r in records} == {QUEUE}
    assert (client.llen(Q.queue), client.llen(Q.claimed)) == (0, 0)
    assert (client.zcard(Q.scheduled), client.zcard(Q.running)) == (0, 0)
    text = log.read_text()
    assert {line: text.count(line) for line in lines} == lines, text
    assert "Traceback" not in text, text


CORRUPT_CASES = {
    "attempts-not-an-integer": ({"jk_attempts": "abc"}, "field jk_attempts of its record"),
    "no-status": ({"status": None}, "its record has no status"),
}


@pytest.mark.parametrize("case", CORRUPT_CASES.values(), ids=CORRUPT_CASES.keys())
def test_a_corrupt_job_hash_fails_readably_and_the_worker_goes_on(
    engine: RQEngine,
    client: redis.Redis,
    jobkit_redis_server: RedisServer,
    tmp_path: Path,
    case: tuple[dict[str, Any], str],
) -> None:
    """Before: a non-integer attempts count left the job in no list and `get_job` raised a
    bare ValueError; a hash with no status was dropped without a word."""
    changes, problem = case
    log = tmp_path / "worker.log"
    _job_hash(client, "corrupt", **changes)
    with WorkerProcess(jobkit_redis_server.url, [QUEUE], ["tests.rq_jobs"], env=FAST, log_path=log):
        client.rpush(Q.queue, "corrupt")
        info = _wait_until_failed("corrupt")
        _serves(tmp_path)
    assert info.status == JobStatus.FAILED
    assert info.error is not None and info.error.type == "CorruptJobError"
    assert problem in info.error.message
    assert client.zscore(Q.failed, "corrupt") is not None  # in the failed registry
    assert "job corrupt: its record is corrupt; failed" in log.read_text()
    assert count_files(tmp_path) == 2  # the two jobs of `_serves` ran, not the corrupt one


def _wait_until_failed(job_id: str) -> JobInfo:
    """`get_job` raises `CorruptJobError` until the worker has failed the job."""
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(CorruptJobError):
            info = get_job(job_id)
            if info.is_terminal:
                return info
        assert time.monotonic() < deadline, "the corrupt job never ended"
        time.sleep(0.02)


def count_files(tmp_path: Path) -> int:
    from jobkit_dispatch.conformance._files import count

    return count(str(tmp_path), "ok")


def test_a_corrupt_job_in_the_running_set_fails_instead_of_stalling_recovery(
    engine: RQEngine, client: redis.Redis, jobkit_redis_server: RedisServer, tmp_path: Path
) -> None:
    """Before: the recovery script failed on it every round (logged as a Redis outage),
    after taking it out of the running set: the job stayed `started` in no list."""
    _job_hash(client, "lost", status="started", jk_attempts="x")
    client.zadd(Q.running, {"lost": 1})  # its lease ran out long ago
    log = tmp_path / "worker.log"
    with WorkerProcess(jobkit_redis_server.url, [QUEUE], ["tests.rq_jobs"], env=FAST, log_path=log):
        info = _wait_until_failed("lost")
        _serves(tmp_path)
    assert (info.status, info.error and info.error.type) == (JobStatus.FAILED, "CorruptJobError")
    assert client.hget(keys.job_key("lost"), "jk_corrupt:jk_attempts") == b"x"
    assert "Redis unavailable" not in log.read_text()


def test_get_job_names_the_corrupt_field(engine: RQEngine, client: redis.Redis) -> None:
    _job_hash(client, "garbled", jk_progress=b"\x00not json")
    with pytest.raises(CorruptJobError, match=r"'garbled'.*field 'jk_progress'"):
        get_job("garbled")


LOOPS = {  # the loop (as its log line names it): a method only it calls
    "fetch": "jobkit_dispatch.engines.rq.fetch.Fetcher._pop_now",
    "promotion and recovery": "jobkit_dispatch.engines.rq.housekeeping.Housekeeper._promote_due",
    "heartbeat": "jobkit_dispatch.engines.rq.housekeeping.Housekeeper._repeat_abort",
    "cancel listener": "jobkit_dispatch.engines.rq.cancel.Cancellations._heard",
}


@pytest.mark.parametrize("loop", LOOPS)
async def test_a_loop_survives_an_unexpected_error_and_logs_it_once(
    engine: RQEngine,
    client: redis.Redis,
    jobkit_redis_server: RedisServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    loop: str,
) -> None:
    """The loop fails three times in a row with an error no code expects, then works: it
    logged once, and the worker kept serving (fetch, promotion, heartbeat, listening)."""
    module_name, cls_name, method = LOOPS[loop].rsplit(".", 2)
    cls = getattr(__import__(module_name, fromlist=[cls_name]), cls_name)
    original = getattr(cls, method)
    failures = {"left": 3}

    def broken(self: Any, *args: Any) -> Any:
        if failures["left"]:
            failures["left"] -= 1
            raise RuntimeError(f"injected into {method}")
        return original(self, *args)

    monkeypatch.setattr(cls, method, broken)
    settings = JobkitSettings(redis_url=jobkit_redis_server.url, worker_heartbeat=0.2)
    worker = RQWorker(QUEUE, settings=settings)
    running = asyncio.create_task(worker.run())
    try:
        await _wait(lambda: client.scard(Q.workers) == 1)
        while failures["left"]:
            if method == "_heard":  # each message heard fails, three times
                client.publish(keys.cancel_channel, "no-such-job")
            await asyncio.sleep(0.05)
        beat = float(client.hget(worker.worker_key, "jk_heartbeat") or 0)
        await asyncio.to_thread(_serves, tmp_path)
        await _wait(lambda: float(client.hget(worker.worker_key, "jk_heartbeat") or 0) > beat)
        await _wait(lambda: _listening(client))
    finally:
        worker.stop()
        await running
    logged = [r for r in caplog.records if "unexpected error" in r.getMessage()]
    assert len(logged) == 1, [r.getMessage() for r in logged]
    assert f"in the {loop} loop" in logged[0].getMessage()
    assert logged[0].exc_info is not None and f"injected into {method}" in str(
        logged[0].exc_info[1]
    )


def _listening(client: redis.Redis) -> bool:
    return int(dict(client.pubsub_numsub(keys.cancel_channel))[keys.cancel_channel.encode()]) > 0


async def _wait(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)
