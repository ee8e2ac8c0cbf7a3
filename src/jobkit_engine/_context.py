"""What a job handler is given: `JobContext`, and its step API.

Engines that keep step results in a store (inline, RQ) share `MemoSteps`; an engine with
its own durable execution (Temporal) implements the `Steps` protocol directly.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from jobkit.durations import Duration, require_aware, to_timedelta
from jobkit.errors import DuplicateStepError, StepError
from jobkit_engine._clock import Clock
from jobkit_engine._codec import from_json_for, to_json
from jobkit_engine._status import Progress

T = TypeVar("T")

MISSING: Any = object()
_WAKE_AT = "__jobkit_wake_at__"


class Steps(Protocol):
    """The step API of `ctx.step`."""

    async def run(
        self, step_id: str, fn: Callable[..., T | Awaitable[T]], *args: Any, **kwargs: Any
    ) -> T:
        """Run `fn(*args, **kwargs)` once per job; later executions get its stored result."""
        ...

    async def sleep(self, step_id: str, duration: Duration) -> None:
        """Wait `duration`; long waits end this execution and resume the job later."""
        ...

    async def sleep_until(self, step_id: str, when: datetime) -> None:
        """Wait until `when` (timezone-aware); long waits free the worker."""
        ...


class StepMemo(Protocol):
    """Where a job's completed steps live between its executions (attempts, resumes)."""

    def get(self, step_id: str) -> Any:
        """The stored JSON value of `step_id`, or `MISSING`."""
        ...

    async def save(self, step_id: str, value: Any) -> None:
        """Store the JSON value of a completed step (before the job moves on)."""
        ...


class DictStepMemo:
    """A `StepMemo` in a dict, for engines whose jobs live in this process."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self.data: dict[str, Any] = {} if data is None else data

    def get(self, step_id: str) -> Any:
        return self.data.get(step_id, MISSING)

    async def save(self, step_id: str, value: Any) -> None:
        self.data[step_id] = value


class SuspendJob(BaseException):
    """Raised by a long `step.sleep` to end this execution until `wake_at`.

    A BaseException so that a handler's `except Exception` cannot swallow it.
    """

    def __init__(self, wake_at: datetime) -> None:
        super().__init__(wake_at)
        self.wake_at = wake_at


class MemoSteps:
    """Steps memoized in a `StepMemo`; sleeps past `sleep_threshold` suspend the job."""

    def __init__(
        self,
        memo: StepMemo,
        clock: Clock,
        sleep_threshold: timedelta,
        *,
        before_step: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self._memo = memo
        self._clock = clock
        self._threshold = sleep_threshold
        # The engine's say before a step function runs (not when its result is replayed):
        # e.g. a cancel accepted elsewhere, checked atomically, so no step starts after it.
        self._before_step = before_step
        self._used: set[str] = set()

    def _claim(self, step_id: str) -> None:
        if not isinstance(step_id, str) or not step_id:
            raise StepError(f"a step id must be a non-empty string, got {step_id!r}")
        if step_id in self._used:
            raise DuplicateStepError(step_id)
        self._used.add(step_id)

    async def run(self, step_id: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self._claim(step_id)
        stored = self._memo.get(step_id)
        if stored is MISSING:
            if self._before_step is not None:
                await self._before_step(step_id)
            value = await _call(fn, args, kwargs)
            try:
                stored = to_json(value)
            except TypeError as exc:
                raise StepError(
                    f"step {step_id!r} returned a value that is not JSON: {exc}"
                ) from None
            await self._memo.save(step_id, stored)
        return from_json_for(fn, stored)

    async def sleep(self, step_id: str, duration: Duration) -> None:
        await self._sleep(step_id, lambda: self._clock.now() + to_timedelta(duration))

    async def sleep_until(self, step_id: str, when: datetime) -> None:
        wake_at = require_aware(when, "sleep_until(when)")
        await self._sleep(step_id, lambda: wake_at)

    async def _sleep(self, step_id: str, first_wake_at: Callable[[], datetime]) -> None:
        # The wake time is fixed when the sleep is first reached, so a resumed job wakes
        # at the original deadline instead of starting the sleep over.
        self._claim(step_id)
        stored = self._memo.get(step_id)
        persisted = isinstance(stored, dict) and _WAKE_AT in stored
        wake_at = datetime.fromisoformat(stored[_WAKE_AT]) if persisted else first_wake_at()
        remaining = wake_at - self._clock.now()
        if remaining <= timedelta(0):
            return
        if remaining < self._threshold:
            await self._clock.sleep_until(wake_at)
            return
        if not persisted:
            await self._memo.save(step_id, {_WAKE_AT: wake_at.isoformat()})
        raise SuspendJob(wake_at)


async def _call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # Sync step functions run in a thread: a blocking call must not stall the event loop
    # that other jobs of the same worker share.
    if inspect.iscoroutinefunction(fn):
        return await fn(*args, **kwargs)
    result = await asyncio.to_thread(fn, *args, **kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result


class JobContext:
    """Handed to every job handler: who the job is, its steps, and a progress channel."""

    __slots__ = ("_progress_sink", "attempt", "engine", "job_id", "job_name", "logger", "step")

    def __init__(
        self,
        *,
        job_id: str,
        job_name: str,
        attempt: int,
        engine: str,
        step: Steps,
        progress_sink: Callable[[Progress], None],
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    ) -> None:
        self.job_id = job_id
        self.job_name = job_name
        self.attempt = attempt  # 1 for the first attempt
        self.engine = engine
        self.step = step
        self._progress_sink = progress_sink
        self.logger = logger or logging.LoggerAdapter(
            logging.getLogger(f"jobkit.jobs.{job_name}"),
            {"job_id": job_id, "job_name": job_name, "attempt": attempt},
        )

    def report_progress(self, fraction: float, message: str | None = None) -> None:
        """Publish how far the job got (`fraction` in [0, 1]); `get_job` shows the latest."""
        self._progress_sink(Progress(float(fraction), message))

    def __repr__(self) -> str:
        return (
            f"JobContext(job_id={self.job_id!r}, job_name={self.job_name!r}, "
            f"attempt={self.attempt}, engine={self.engine!r})"
        )
