"""The Redis connection: one client per URL per process, with short timeouts.

Short socket timeouts are what keep a dead or blackholed Redis from costing a caller a
long TCP timeout. redis-py is imported only when a client is first asked for, so
`import jobkit` stays free of it.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

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
            pool = client.connection_pool
            pool.connection_class = _marking_unsent(pool.connection_class)
            _clients[key] = client
    return client


_UNSENT = "jobkit_unsent"  # set on an error raised before the command left this process


def command_sent(exc: BaseException) -> bool:
    """Whether a command that failed with `exc` may have reached Redis, and so may have
    been applied. False only when the connection failed before anything of the command
    was sent — connecting, the handshake (AUTH, SELECT) or the idle health check — which
    clients from `get_redis` record on the error; any other client's error counts as sent,
    the safe answer."""
    return not getattr(exc, _UNSENT, False)


class _MarksUnsent:
    """Mixed into redis-py's connection class: marks the errors of the steps that come
    before a command is written to the socket. redis-py raises the same `TimeoutError` for
    "connecting timed out" as for "the reply timed out", so where the error was raised is
    the only way to tell them apart."""

    def connect(self) -> Any:
        try:
            return super().connect()  # type: ignore[misc]
        except Exception as exc:
            setattr(exc, _UNSENT, True)
            raise

    def connect_check_health(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().connect_check_health(*args, **kwargs)  # type: ignore[misc]
        except Exception as exc:
            setattr(exc, _UNSENT, True)
            raise

    def check_health(self) -> Any:  # the PING sent first on a connection idle for long
        try:
            return super().check_health()  # type: ignore[misc]
        except Exception as exc:
            setattr(exc, _UNSENT, True)
            raise


_marking_classes: dict[type, type] = {}


def _marking_unsent(base: type) -> type:
    marking = _marking_classes.get(base)
    if marking is None:
        marking = _marking_classes[base] = type(f"Unsent{base.__name__}", (_MarksUnsent, base), {})
    return marking


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
