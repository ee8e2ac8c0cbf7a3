"""The fence on RQ's side: handing a job over to Temporal, atomically (fakeredis), and
telling a lost reply from a request never sent (real sockets)."""

from __future__ import annotations

import socket
import time
import uuid
from datetime import timedelta

import fakeredis
import pytest
import redis

from jobkit import JobkitSettings
from jobkit.connection import command_sent, get_redis
from jobkit.errors import EngineUnavailableError, JobMovedError
from jobkit_dispatch.engines import JobRequest
from jobkit_dispatch.engines.base import Fenced
from jobkit_dispatch.engines.rq import RQEngine, keys
from jobkit_dispatch.engines.rq.link import WorkerLink
from jobkit_dispatch.engines.rq.scripts import ENQUEUE
from jobkit_dispatch.testing import RedisServer
from jobkit_dispatch.testing.redis_server import free_port
from tests.lossy_proxy import LossyProxy

Q = keys.QueueKeys("default")
TTL = JobkitSettings().failure_ttl


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def client(server: fakeredis.FakeServer) -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=server)


@pytest.fixture
def engine(client: fakeredis.FakeRedis) -> RQEngine:
    return RQEngine(client, settings=JobkitSettings())


@pytest.fixture
def link(server: fakeredis.FakeServer) -> WorkerLink:
    return WorkerLink("w1", Q, JobkitSettings(), fakeredis.FakeAsyncRedis(server=server))


def request(**changes: object) -> JobRequest:
    base = {
        "job_id": uuid.uuid4().hex,
        "job_name": "tests.greet",
        "payload": {"name": "a"},
        "queue": "default",
        "reason": "rq",
    }
    return JobRequest(**{**base, **changes})  # type: ignore[arg-type]


MOVED = Fenced("temporal", "redis-unhealthy: lost")  # RQ will never run the job


def fence(engine: RQEngine, job_id: str) -> Fenced:
    return engine.fence(job_id, "temporal", "redis-unhealthy: lost")


def assert_marker(client: fakeredis.FakeRedis, job_id: str) -> None:
    """The hash is a marker only: no job data, kept for the marker ttl."""
    fields = client.hgetall(keys.job_key(job_id))
    assert fields == {
        b"status": b"canceled",
        b"jk_moved_to": b"temporal",
        b"jk_reason": b"redis-unhealthy: lost",
    }
    assert client.ttl(keys.job_key(job_id)) == pytest.approx(TTL, abs=5)


async def start(link: WorkerLink, job_id: str) -> object:
    """What a worker that popped `job_id` gets from START."""
    now = time.time()
    return await link.start(
        keys=[keys.job_key(job_id), Q.claimed, Q.running],
        args=[job_id, now, now + 60, link.name, "2026-01-01T00:00:00.000000Z"],
    )


def test_no_copy_leaves_a_marker_that_refuses_a_late_enqueue(
    engine: RQEngine, client: fakeredis.FakeRedis
) -> None:
    r = request()
    assert fence(engine, r.job_id) == MOVED
    assert_marker(client, r.job_id)
    with pytest.raises(JobMovedError) as refused:
        engine.enqueue(r)  # the enqueue whose reply was lost, arriving late
    assert (refused.value.engine, refused.value.reason) == ("temporal", "redis-unhealthy: lost")
    assert client.llen(Q.queue) == 0
    assert engine.get(r.job_id) is None  # not a job: get_job asks the next engine


def test_a_queued_copy_is_withdrawn(engine: RQEngine, client: fakeredis.FakeRedis) -> None:
    r = request()
    engine.enqueue(r)
    assert fence(engine, r.job_id) == MOVED
    assert client.llen(Q.queue) == 0
    assert_marker(client, r.job_id)
    assert engine.get(r.job_id) is None


def test_a_delayed_copy_is_withdrawn(engine: RQEngine, client: fakeredis.FakeRedis) -> None:
    r = request(delay=timedelta(minutes=5))
    engine.enqueue(r)
    assert fence(engine, r.job_id) == MOVED
    assert client.zcard(Q.scheduled) == 0
    assert_marker(client, r.job_id)


async def test_a_copy_a_worker_popped_but_not_started_never_starts(
    engine: RQEngine, client: fakeredis.FakeRedis, link: WorkerLink
) -> None:
    r = request()
    engine.enqueue(r)
    await link.redis.lmove(Q.queue, Q.claimed)  # popped: START comes next
    assert fence(engine, r.job_id) == MOVED
    assert not await start(link, r.job_id)
    assert await link.hand_back([r.job_id]) == 0  # housekeeping does not requeue it either
    assert client.llen(Q.queue) == 0
    assert_marker(client, r.job_id)


async def test_a_started_copy_stays_with_rq(
    engine: RQEngine, client: fakeredis.FakeRedis, link: WorkerLink
) -> None:
    r = request()
    engine.enqueue(r)
    await link.redis.lmove(Q.queue, Q.claimed)
    assert await start(link, r.job_id)
    before = client.hgetall(keys.job_key(r.job_id))
    assert fence(engine, r.job_id) == Fenced("rq", "rq")
    assert client.hgetall(keys.job_key(r.job_id)) == before  # untouched
    assert engine.get(r.job_id) is not None


@pytest.mark.parametrize(
    "fields",
    [
        {"status": "finished", "jk_started_at": "1"},
        {"status": "failed", "jk_started_at": "1"},
        {"status": "canceled"},  # cancelled on RQ before the fence: RQ's answer stands
        {"status": "scheduled", "jk_wait": "retry", "jk_started_at": "1"},
        {"status": "queued", "jk_started_at": "1"},  # requeued after its worker died
    ],
    ids=["finished", "failed", "cancelled", "retrying", "requeued"],
)
def test_a_copy_rq_has_had_stays_with_rq(
    engine: RQEngine, client: fakeredis.FakeRedis, fields: dict[str, str]
) -> None:
    r = request()
    engine.enqueue(r)
    client.hset(keys.job_key(r.job_id), mapping=fields)
    assert fence(engine, r.job_id) == Fenced("rq", "rq")
    assert client.hget(keys.job_key(r.job_id), "jk_moved_to") is None


def test_fencing_twice_changes_nothing(engine: RQEngine, client: fakeredis.FakeRedis) -> None:
    r = request()
    engine.enqueue(r)
    assert fence(engine, r.job_id) == MOVED  # a retried activity runs it again
    assert fence(engine, r.job_id) == MOVED
    assert_marker(client, r.job_id)


def test_the_holder_is_what_a_fence_would_keep_and_asking_writes_nothing(
    engine: RQEngine, client: fakeredis.FakeRedis
) -> None:
    nothing, queued, started, moved = (request() for _ in range(4))
    for r in (queued, started, moved):
        engine.enqueue(r)
    client.hset(keys.job_key(started.job_id), mapping={"status": "started", "jk_started_at": 1})
    fence(engine, moved.job_id)
    before = {r.job_id: client.hgetall(keys.job_key(r.job_id)) for r in (queued, started, moved)}
    assert engine.holder(nothing.job_id) is None
    assert engine.holder(queued.job_id) is None  # a fence would withdraw it
    assert engine.holder(started.job_id) == Fenced("rq", "rq")
    assert engine.holder(moved.job_id) == MOVED  # the marker's engine and reason
    assert {
        r.job_id: client.hgetall(keys.job_key(r.job_id)) for r in (queued, started, moved)
    } == before
    assert not client.exists(keys.job_key(nothing.job_id))
    assert queued.job_id.encode() in client.lrange(Q.queue, 0, -1)


def test_a_repeat_of_an_id_on_rq_is_not_created_again(engine: RQEngine) -> None:
    r = request()
    assert engine.enqueue(r) is True
    assert engine.enqueue(r) is False  # the hot path is unchanged: one script, one answer


# -- a lost reply versus a request never sent, on real sockets ----------------------------


@pytest.fixture
def real(jobkit_redis_server: RedisServer) -> RedisServer:
    direct = redis.Redis.from_url(jobkit_redis_server.url)
    direct.flushdb()
    direct.script_load(ENQUEUE)  # the enqueue is one EVALSHA, not a NOSCRIPT and a retry
    direct.close()
    return jobkit_redis_server


def _engine(url: str) -> RQEngine:
    settings = JobkitSettings(redis_url=url, redis_socket_timeout=0.2, circuit_cool_down=0.01)
    return RQEngine(get_redis(settings=settings), settings=settings)


def _unavailable(engine: RQEngine, r: JobRequest) -> EngineUnavailableError:
    with pytest.raises(EngineUnavailableError) as caught:
        engine.enqueue(r)
    return caught.value


def test_a_lost_reply_leaves_the_outcome_unknown(real: RedisServer) -> None:
    with LossyProxy(real.port, lambda data: b"EVALSHA" in data.upper()) as proxy:
        r = request()
        error = _unavailable(_engine(proxy.url), r)
    assert error.outcome_unknown is True
    assert redis.Redis.from_url(real.url).exists(keys.job_key(r.job_id)) == 1  # applied


def test_a_refused_connection_sent_nothing() -> None:
    error = _unavailable(_engine(f"redis://127.0.0.1:{free_port()}/0"), request())
    assert error.outcome_unknown is False


def test_a_server_that_never_answers_the_handshake_sent_nothing() -> None:
    with socket.create_server(("127.0.0.1", 0)) as hung:  # accepts, never answers
        port = hung.getsockname()[1]
        error = _unavailable(_engine(f"redis://127.0.0.1:{port}/0"), request())
    assert error.outcome_unknown is False


def test_an_error_from_a_client_jobkit_did_not_make_counts_as_sent() -> None:
    plain = redis.Redis(port=free_port(), socket_connect_timeout=0.2)
    with pytest.raises(redis.ConnectionError) as caught:
        plain.ping()
    assert command_sent(caught.value) is True  # the safe answer: it may have been applied
