"""Per-job state a worker keeps in Redis while the job runs: step results and progress."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from jobkit_dispatch.engines.rq.keys import step_field_prefix, step_saved_prefix
from jobkit_engine import Progress
from jobkit_engine.runtime import MISSING

if TYPE_CHECKING:
    from redis.asyncio import Redis


class RedisStepMemo:
    """Step results as fields of the job hash: they arrive with the job (no extra read)
    and each completed step costs one HSET."""

    def __init__(
        self,
        redis: Redis,
        job_key: str,
        loaded: dict[str, Any],
        retrying: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]] | None = None,
    ) -> None:
        self._redis = redis
        self._key = job_key
        self._data = loaded
        self._retrying = retrying

    def get(self, step_id: str) -> Any:
        return self._data.get(step_id, MISSING)

    async def save(self, step_id: str, value: Any) -> None:
        # A step that ran must not run again because Redis blinked: with `retrying` (the
        # worker's ride-out-the-outage loop) the write waits for Redis instead of failing.
        # With it, in the same HSET, when it was saved: a step.run's end, a sleep's start
        # (`describe` reads both; no extra write).
        mapping = {
            step_field_prefix + step_id: json.dumps(value),
            step_saved_prefix + step_id: time.time(),
        }
        if self._retrying is None:
            await self._redis.hset(self._key, mapping=mapping)
        else:
            await self._retrying(lambda: self._redis.hset(self._key, mapping=mapping))
        self._data[step_id] = value


class ProgressWriter:
    """`report_progress` is synchronous; this writes the latest value in the background,
    coalescing bursts so a chatty job costs at most one write in flight."""

    def __init__(self, redis: Redis, job_key: str) -> None:
        self._redis = redis
        self._key = job_key
        self._latest: Progress | None = None
        self._task: asyncio.Task[None] | None = None

    def report(self, progress: Progress) -> None:
        self._latest = progress
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        while self._latest is not None:
            progress, self._latest = self._latest, None
            value = json.dumps({"fraction": progress.fraction, "message": progress.message})
            await self._redis.hset(self._key, "jk_progress", value)

    async def flush(self) -> None:
        """Wait until the last reported progress is written."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
