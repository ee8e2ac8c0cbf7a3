"""The Redis connection: one client per URL per process, with short timeouts.

Short socket timeouts are what keep a dead or blackholed Redis from costing a caller a
long TCP timeout. redis-py is imported only when a client is first asked for, so
`import jobkit` stays free of it.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

from pydantic import SecretStr

from jobkit.errors import EngineNotInstalledError
from jobkit.settings import JobkitSettings, get_settings

if TYPE_CHECKING:
    from redis import Redis

_clients: dict[tuple[int, str, float, float], Redis] = {}
_lock = threading.Lock()


def _import_redis():
    try:
        import redis
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise EngineNotInstalledError("rq", "rq", "redis") from exc
    return redis


def get_redis(url: str | SecretStr | None = None, settings: JobkitSettings | None = None) -> Redis:
    """The shared client for `url` (default: `JOBKIT_REDIS_URL`).

    Clients are cached per process id as well, so a forked worker never shares a socket
    with its parent.
    """
    settings = settings or get_settings()
    secret = url if url is not None else settings.redis_url
    raw = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
    key = (os.getpid(), raw, settings.redis_socket_timeout, settings.redis_connect_timeout)
    client = _clients.get(key)
    if client is not None:
        return client
    with _lock:
        client = _clients.get(key)
        if client is None:
            redis = _import_redis()
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            client = redis.Redis.from_url(
                raw,
                socket_timeout=settings.redis_socket_timeout,
                socket_connect_timeout=settings.redis_connect_timeout,
                health_check_interval=30,
                # No silent retries: a sick Redis must cost one timeout, then the circuit
                # breaker and the fallback decide what happens next.
                retry=Retry(NoBackoff(), 0),
            )
            _clients[key] = client
    return client


def get_cache_redis(settings: JobkitSettings | None = None) -> Redis | None:
    """The optional volatile cache Redis (`JOBKIT_CACHE_REDIS_URL`), or None."""
    settings = settings or get_settings()
    if settings.cache_redis_url is None:
        return None
    return get_redis(settings.cache_redis_url, settings)


def close_all() -> None:
    """Close every cached client (tests, and processes that are about to fork)."""
    with _lock:
        for client in _clients.values():
            client.close()
        _clients.clear()
