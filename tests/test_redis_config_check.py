"""The queue Redis check: warn when Redis may evict or forget jobs, never fail over it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis

from jobkit import JobkitSettings
from jobkit.health import check_queue_redis, check_queue_redis_async
from jobkit_dispatch.engines.rq.worker import RQWorker
from jobkit_dispatch.testing import RedisServer
from jobkit_dispatch.testing.redis_server import free_port


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A Redis of this test's own, configured as production wants it: the tests change it."""
    with RedisServer(appendonly=True) as server:
        yield server


@pytest.fixture
def client(server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(server.url)
    yield client
    client.close()


def _user_url(server: RedisServer, client: redis.Redis, *rules: str) -> str:
    """The URL of a new ACL user with `rules`, password `s3cret`."""
    client.execute_command("ACL", "SETUSER", "jobkit", "on", ">s3cret", "~*", "&*", "+@all", *rules)
    return f"redis://jobkit:s3cret@127.0.0.1:{server.port}/0"


def test_a_noeviction_persistent_redis_gets_no_warning(client: redis.Redis) -> None:
    assert check_queue_redis(client) == []


def test_an_evicting_policy_is_named_with_its_fix(client: redis.Redis) -> None:
    client.config_set("maxmemory-policy", "allkeys-lru")
    [warning] = check_queue_redis(client)
    assert "'allkeys-lru'" in warning
    assert "CONFIG SET maxmemory-policy noeviction" in warning


def test_no_aof_and_no_snapshots_is_a_warning_but_either_one_is_enough(
    client: redis.Redis,
) -> None:
    client.config_set("appendonly", "no")
    client.config_set("save", "")
    [warning] = check_queue_redis(client)
    assert "no persistence" in warning
    client.config_set("save", "3600 1")  # RDB snapshots alone: some persistence
    assert check_queue_redis(client) == []


async def test_the_asyncio_check_reads_the_same(client: redis.Redis, server: RedisServer) -> None:
    client.config_set("maxmemory-policy", "volatile-ttl")
    client.config_set("appendonly", "no")
    async with aioredis.Redis.from_url(server.url) as async_client:
        warnings = await check_queue_redis_async(async_client)
    assert [("volatile-ttl" in w, "no persistence" in w) for w in warnings] == [
        (True, False),
        (False, True),
    ]


async def test_a_redis_that_forbids_config_gets_no_warning(
    client: redis.Redis, server: RedisServer
) -> None:
    """As a managed Redis does: its CONFIG answers with an error, the check says nothing."""
    client.config_set("maxmemory-policy", "allkeys-lru")
    assert check_queue_redis(client) != []  # what the limited user below cannot read
    url = _user_url(server, client, "-config")
    with redis.Redis.from_url(url) as limited:
        with pytest.raises(redis.ResponseError):
            limited.config_get("maxmemory-policy")
        assert check_queue_redis(limited) == []
    async with aioredis.Redis.from_url(url) as limited_async:
        assert await check_queue_redis_async(limited_async) == []


async def test_an_unreachable_redis_gets_no_warning() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with redis.Redis.from_url(url, socket_connect_timeout=1) as dead:
        assert check_queue_redis(dead) == []
    async with aioredis.Redis.from_url(url, socket_connect_timeout=1) as dead_async:
        assert await check_queue_redis_async(dead_async) == []


class _Warnings(logging.Handler):
    """Collects the `jobkit.worker` warnings, and says when one mentions `text`."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.WARNING)
        self.text = text
        self.messages: list[str] = []
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        if self.text in self.messages[-1]:
            self.seen.set()


async def test_a_worker_warns_at_startup_without_the_password(
    client: redis.Redis, server: RedisServer
) -> None:
    client.config_set("maxmemory-policy", "allkeys-lru")
    url = _user_url(server, client)
    worker = RQWorker("default", settings=JobkitSettings(redis_url=url))
    handler = _Warnings("maxmemory-policy is 'allkeys-lru'")
    logger = logging.getLogger("jobkit.worker")
    logger.addHandler(handler)
    running = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(handler.seen.wait(), timeout=10)
    finally:
        worker.stop()
        await running
        logger.removeHandler(handler)
    [warning] = [m for m in handler.messages if "maxmemory-policy" in m]
    assert f"redis://***@127.0.0.1:{server.port}/0" in warning
    assert "s3cret" not in " ".join(handler.messages)
