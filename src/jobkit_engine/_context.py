"""What a job handler is given: `JobContext`, and its step API.

`MemoSteps` is the one step implementation: every engine uses it, with a `StepMemo` for
where step results live and small hooks for what differs (where a step function runs, how
a long sleep waits, a check before a step starts).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from jobkit.durations import Duration, require_aware, to_timedelta
from jobkit.errors import DuplicateStepError, PayloadTooLargeError, StepError
from jobkit_engine._clock import Clock
from jobkit_engine._codec import from_json_for
from jobkit_engine._failures import decode_exception, encode_exception
from jobkit_engine._status import Progress
from jobkit_engine._steps import DEFAULT_MAX_BYTES, encode_call, run_step_function, step_ref

T = TypeVar("T")

MISSING: Any = object()
WAKE_AT_KEY = "__jobkit_wake_at__"  # a sleep's memo entry: {WAKE_AT_KEY: iso time}


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


StepRunner = Callable[[str, str, Callable[..., Any], dict[str, Any]], Awaitable[Any]]
"""`(step_id, ref, fn, call) -> result JSON`: where an engine runs a step function.

`call` is the step's arguments as JSON (`{"args": [...], "kwargs": {...}}`). The runner
returns the result as JSON, or raises the step's exception as `decode_exception` rebuilds
it. The default runs the function in this process; Temporal runs it as an activity.
"""

Suspender = Callable[[str, datetime], Awaitable[None]]
"""`(step_id, wake_at)`: how an engine waits out a long sleep. The default raises
`SuspendJob`, ending the execution; Temporal waits on a durable timer instead."""


class MemoSteps:
    """`ctx.step` on every engine: the step rules, memoized results and sleeps, with the
    engine's part reduced to hooks.

    A step's id is claimed (unique within the job), its function checked (an import path
    a worker can use) and its arguments encoded as JSON within `max_bytes`, whether or not
    its result is already in the memo — so a rule is never enforced only on a first run.
    A step not in the memo runs through `run_step` and its JSON result is saved before the
    job moves on. A sleep's wake time is fixed the first time it is reached, so a resumed
    or retried job wakes at the original deadline; sleeps of at least `sleep_threshold`
    go to `suspend` and free the worker.
    """

    def __init__(
        self,
        memo: StepMemo,
        clock: Clock,
        sleep_threshold: timedelta,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        run_step: StepRunner | None = None,
        suspend: Suspender | None = None,
        before_step: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self._memo = memo
        self._clock = clock
        self._threshold = sleep_threshold
        self._max_bytes = max_bytes
        self._run_step = run_step or self._run_here
        self._suspend = suspend or _suspend_execution
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
        ref = step_ref(step_id, fn)
        call = encode_call(step_id, ref, args, kwargs, self._max_bytes)
        stored = self._memo.get(step_id)
        if stored is MISSING:
            if self._before_step is not None:
                await self._before_step(step_id)
            stored = await self._run_step(step_id, ref, fn, call)
            await self._memo.save(step_id, stored)
        return from_json_for(fn, stored)

    async def _run_here(
        self, step_id: str, ref: str, fn: Callable[..., Any], call: dict[str, Any]
    ) -> Any:
        try:
            return await run_step_function(step_id, ref, fn, call, self._max_bytes)
        except (StepError, PayloadTooLargeError):
            raise  # jobkit's verdict on the step, not the step's own failure
        except Exception as exc:
            # Through the same encoding as a step that ran elsewhere: same class, message
            # and JSON attributes on every engine.
            failure = decode_exception(encode_exception(exc))
            raise failure from failure.__cause__

    async def sleep(self, step_id: str, duration: Duration) -> None:
        await self._sleep(step_id, lambda: self._clock.now() + to_timedelta(duration))

    async def sleep_until(self, step_id: str, when: datetime) -> None:
        wake_at = require_aware(when, "sleep_until(when)")
        await self._sleep(step_id, lambda: wake_at)

    async def _sleep(self, step_id: str, first_wake_at: Callable[[], datetime]) -> None:
        self._claim(step_id)
        stored = self._memo.get(step_id)
        persisted = isinstance(stored, dict) and WAKE_AT_KEY in stored
        wake_at = datetime.fromisoformat(stored[WAKE_AT_KEY]) if persisted else first_wake_at()
        remaining = wake_at - self._clock.now()
        if remaining <= timedelta(0):
            return
        if not persisted:
            await self._memo.save(step_id, {WAKE_AT_KEY: wake_at.isoformat()})
        if remaining < self._threshold:
            await self._clock.sleep_until(wake_at)
            return
        await self._suspend(step_id, wake_at)


async def _suspend_execution(step_id: str, wake_at: datetime) -> None:
    raise SuspendJob(wake_at)


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
