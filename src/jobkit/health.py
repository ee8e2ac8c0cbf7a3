"""Health probes: cheap, bounded in time, and never raising."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis import Redis
    from redis.asyncio import Redis as AsyncRedis

log = logging.getLogger("jobkit.health")


@dataclass(frozen=True)
class Health:
    """The answer of a probe: `ok`, and when not ok a one-line `detail` safe to log."""

    ok: bool
    detail: str = ""
    latency: float = 0.0


def probe_redis(client: Redis) -> Health:
    """PING `client`; the client's own socket timeouts bound how long this can take."""
    started = time.perf_counter()
    try:
        client.ping()
    except Exception as exc:  # any failure means "not healthy", whatever redis-py raised
        return Health(False, f"{type(exc).__name__}: {exc}", time.perf_counter() - started)
    return Health(True, "", time.perf_counter() - started)


# What `check_queue_redis` reads, in one pipelined round trip. Separate CONFIG GETs, not
# one with several patterns: that form needs Redis 7.
_QUEUE_CONFIG = ("maxmemory-policy", "appendonly", "save")


def check_queue_redis(client: Redis) -> list[str]:
    """Warnings, safe to log, about a queue Redis configured to lose jobs; [] when fine.

    Never raises: a Redis that forbids `CONFIG` (as managed ones often do) gets no warning
    for what it hides, and one that cannot be reached gets none at all; reachability is
    `probe_redis`'s business.
    """
    try:
        replies = _config_pipeline(client).execute(raise_on_error=False)
    except Exception as exc:
        log.debug("queue Redis config not checked: %s", type(exc).__name__)
        return []
    return _queue_config_warnings(replies)


async def check_queue_redis_async(client: AsyncRedis) -> list[str]:
    """`check_queue_redis` for an asyncio client, as the RQ worker holds."""
    try:
        replies = await _config_pipeline(client).execute(raise_on_error=False)
    except Exception as exc:
        log.debug("queue Redis config not checked: %s", type(exc).__name__)
        return []
    return _queue_config_warnings(replies)


def _config_pipeline(client: Any) -> Any:
    """One `CONFIG GET` per setting of `_QUEUE_CONFIG`, queued on a (sync or async) pipeline."""
    pipe = client.pipeline(transaction=False)
    for name in _QUEUE_CONFIG:
        pipe.config_get(name)
    return pipe


def _queue_config_warnings(replies: list[Any]) -> list[str]:
    """Judge the `CONFIG GET` replies for `_QUEUE_CONFIG`; an unreadable one judges nothing."""
    config: dict[str, str | None] = dict.fromkeys(_QUEUE_CONFIG)
    for name, reply in zip(_QUEUE_CONFIG, replies, strict=False):
        value = reply.get(name) if isinstance(reply, dict) else None
        config[name] = value.decode() if isinstance(value, bytes) else value
        if value is None:
            log.debug("queue Redis config %s unreadable: %r", name, reply)
    warnings = []
    policy = config["maxmemory-policy"]
    if policy is not None and policy != "noeviction":
        warnings.append(
            f"maxmemory-policy is {policy!r}, not 'noeviction': a full Redis may evict a "
            "queued job, and the job is lost without a trace; fix with "
            "`CONFIG SET maxmemory-policy noeviction` and the same line in redis.conf"
        )
    if config["appendonly"] == "no" and config["save"] == "":
        warnings.append(
            'no persistence (appendonly no, save ""): a Redis restart loses every queued '
            "job; set `appendonly yes` in redis.conf (or at least RDB snapshots with "
            "`save`), unless a replica takes over when this Redis fails"
        )
    return warnings
