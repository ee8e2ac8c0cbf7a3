"""Settings, queues, the Redis connection and the health probe."""

from __future__ import annotations

import time

import pytest

from jobkit import JobkitSettings, QueueRegistry, QueueSpec, redact_url
from jobkit.connection import close_all, get_cache_redis, get_redis
from jobkit.errors import ConfigurationError, UnknownQueueError
from jobkit.health import probe_redis
from jobkit_dispatch.testing import RedisServer
from jobkit_dispatch.testing.redis_server import free_port


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBKIT_REDIS_URL", "redis://:hunter2@cache.internal:6380/1")
    monkeypatch.setenv("JOBKIT_USE_RQ", "false")
    monkeypatch.setenv("JOBKIT_ENGINE", "inline")
    monkeypatch.setenv("JOBKIT_JOB_MODULES", '["myapp.jobs", "myapp.more"]')
    settings = JobkitSettings()
    assert (settings.use_rq, settings.engine) == (False, "inline")
    assert settings.job_modules == ["myapp.jobs", "myapp.more"]
    assert settings.redis_url.get_secret_value() == "redis://:hunter2@cache.internal:6380/1"


def test_secrets_never_show(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBKIT_REDIS_URL", "redis://:hunter2@cache.internal:6380/1")
    settings = JobkitSettings()
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings)
    assert redact_url(settings.redis_url) == "redis://***@cache.internal:6380/1"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_builtin_queues_and_custom_ones() -> None:
    queues = QueueRegistry()
    assert [q.name for q in queues] == ["default", "data_sync", "scheduled"]
    assert queues.get("data_sync").concurrency < queues.get("default").concurrency
    queues.register(QueueSpec("emails", concurrency=3, default_timeout=20))
    assert queues.get("emails").default_timeout.total_seconds() == 20
    with pytest.raises(UnknownQueueError, match="register_queue"):
        queues.get("nope")


@pytest.mark.parametrize("kwargs", [{"name": "a:b"}, {"name": "ok", "concurrency": 0}])
def test_queue_specs_are_checked(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        QueueSpec(**kwargs)  # type: ignore[arg-type]


def test_one_client_per_url(jobkit_redis_server: RedisServer) -> None:
    settings = JobkitSettings(redis_url=jobkit_redis_server.url)
    assert get_redis(settings=settings) is get_redis(settings=settings)
    assert get_redis(settings=settings).ping()


def test_the_cache_redis_is_separate_and_optional(jobkit_redis_server: RedisServer) -> None:
    assert get_cache_redis(JobkitSettings(redis_url=jobkit_redis_server.url)) is None
    cache_url = jobkit_redis_server.url.rsplit("/", 1)[0] + "/3"
    cache = get_cache_redis(
        JobkitSettings(redis_url=jobkit_redis_server.url, cache_redis_url=cache_url)
    )
    assert cache is not None and cache is not get_redis(jobkit_redis_server.url)
    assert cache.ping()
    close_all()
    assert get_redis(cache_url) is not cache  # closed and forgotten: a new client


def test_health_probe_of_a_live_redis(jobkit_redis_server: RedisServer) -> None:
    health = probe_redis(get_redis(jobkit_redis_server.url, JobkitSettings()))
    assert health.ok
    assert health.detail == ""


def test_health_probe_of_a_dead_redis_is_quick_and_does_not_raise() -> None:
    settings = JobkitSettings(redis_connect_timeout=0.2, redis_socket_timeout=0.2)
    started = time.perf_counter()
    health = probe_redis(get_redis(f"redis://127.0.0.1:{free_port()}/0", settings))
    assert not health.ok
    assert "Connection" in health.detail
    assert time.perf_counter() - started < 2.0
