"""What the parts of one worker share: its Redis client, its registered scripts, its
queue's keys, and one way to ride out a Redis outage.

A worker must not die with jobs in hand because Redis blinked: every write that matters
goes through `retrying`, which waits for Redis instead of failing, and an outage is
logged once when it starts and once when it ends, not once per loop and second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from redis.exceptions import AuthenticationError, RedisError

from jobkit.errors import ConfigurationError
from jobkit.settings import JobkitSettings, redact_url
from jobkit_dispatch.engines.rq import keys
from jobkit_dispatch.engines.rq.scripts import (
    BEGIN_STEP,
    FINISH,
    PROMOTE,
    RECLAIM,
    RECOVER,
    START,
)
from jobkit_dispatch.engines.rq.scripts_ops import TRIM

if TYPE_CHECKING:
    import redis.asyncio as aioredis

log = logging.getLogger("jobkit.worker")

T = TypeVar("T")


class WorkerLink:
    """One worker's connection to its queue: client, scripts, keys, outage handling."""

    def __init__(
        self,
        name: str,
        queue_keys: keys.QueueKeys,
        settings: JobkitSettings,
        redis: aioredis.Redis,
    ) -> None:
        self.name = name
        self.keys = queue_keys
        self.settings = settings
        self.redis = redis
        self.start = redis.register_script(START)
        self.finish = redis.register_script(FINISH)
        self.begin_step = redis.register_script(BEGIN_STEP)
        self.promote = redis.register_script(PROMOTE)
        self.recover = redis.register_script(RECOVER)
        self.reclaim = redis.register_script(RECLAIM)
        self.trim = redis.register_script(TRIM)
        self.aborting = False  # set by `RQWorker.abort`: stop waiting for Redis
        self._outage_since: float | None = None  # monotonic time Redis stopped answering

    async def retrying(
        self, action: Callable[[], Awaitable[T]], attempts: int | None = None
    ) -> T | None:
        """Run `action` until Redis answers, backing off up to 5 s; None if the worker
        is aborting or `attempts` ran out."""
        delay, tried = 0.1, 0
        while True:
            try:
                result = await action()
            except AuthenticationError as exc:
                # Not an outage: waiting cannot fix a wrong password. Stop, and say so.
                raise ConfigurationError(
                    f"Redis at {redact_url(self.settings.redis_url)} refused this worker's "
                    f"credentials ({exc}); check the password (and user) in JOBKIT_REDIS_URL"
                ) from None
            except (RedisError, OSError) as exc:
                tried += 1
                if self.aborting or (attempts is not None and tried >= attempts):
                    log.error("worker %s: giving up on Redis: %s", self.name, exc)
                    return None
                self.failed(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            else:
                self.ok()
                return result

    def failed(self, exc: Exception) -> None:
        """Note that Redis did not answer; log it once per outage."""
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning(
                "worker %s: Redis unavailable (%s: %s); riding it out, jobs in hand are kept",
                self.name,
                type(exc).__name__,
                exc,
            )
        else:
            log.debug("worker %s: Redis still unavailable (%s)", self.name, type(exc).__name__)

    def ok(self) -> None:
        """Note that Redis answered; log the end of an outage."""
        if self._outage_since is not None:
            log.warning(
                "worker %s: Redis is back after %.1fs",
                self.name,
                time.monotonic() - self._outage_since,
            )
            self._outage_since = None

    async def hand_back(self, job_ids: Sequence[str | bytes]) -> Any:
        """Put ids this queue's workers popped but never started back at the queue's head
        (those still queued: a cancelled one stays out; one with no job record goes back
        too, to be quarantined by the worker that pops it)."""
        return await self.reclaim(
            keys=[self.keys.claimed, self.keys.queue], args=[keys.job_key_prefix, *job_ids]
        )
