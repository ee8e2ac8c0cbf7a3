"""One attempt of a job, engine-agnostic: the thin processor every engine calls.

An engine hands over a job name, its JSON payload and a way to build the context; it gets
back an `Outcome` and only has to record it (and schedule the retry or the wake-up).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from jobkit.errors import (
    JobTimeoutError,
    NonRetryableError,
    PayloadValidationError,
    StepError,
    UnknownJobError,
)
from jobkit.queues import QueueRegistry, default_queues
from jobkit_engine._context import JobContext, SuspendJob
from jobkit_engine._definition import JobDefinition
from jobkit_engine._registry import JobRegistry, default_registry
from jobkit_engine._status import JobError

_FATAL = (NonRetryableError, StepError, UnknownJobError, PayloadValidationError)

_deadline: ContextVar[asyncio.Timeout | None] = ContextVar("jobkit_attempt_deadline", default=None)


def attempt_deadline() -> asyncio.Timeout | None:
    """The timeout of the attempt running in this task, or None outside `execute_job`.

    An engine whose long sleeps keep the attempt alive (Temporal's durable timers) moves it
    back by the time slept, so that a sleep does not count against the job's timeout, as
    on engines where a long sleep ends the execution.
    """
    return _deadline.get()


@dataclass(frozen=True)
class Succeeded:
    result: Any  # JSON


@dataclass(frozen=True)
class Suspended:
    wake_at: datetime


@dataclass(frozen=True)
class Failed:
    error: JobError
    retry_in: timedelta | None  # None: this failure is final


Outcome = Succeeded | Suspended | Failed


def attempt_timeout(definition: JobDefinition[Any, Any], queues: QueueRegistry) -> timedelta:
    """The job's own timeout, else its queue's default."""
    if definition.timeout is not None:
        return definition.timeout
    return queues.get(definition.queue).default_timeout


async def execute_job(
    job_name: str,
    payload: Any,
    attempt: int,
    make_context: Callable[[JobDefinition[Any, Any]], JobContext],
    *,
    registry: JobRegistry = default_registry,
    queues: QueueRegistry = default_queues,
) -> Outcome:
    """Resolve `job_name`, validate `payload`, run the handler once, classify the result.

    Only registered jobs run: an unknown name or a payload that does not validate fails
    the job for good. Cancellation (`asyncio.CancelledError`) is left to the engine.
    """
    try:
        definition = registry.get(job_name)
        value = definition.validate_payload(payload)
        timeout = attempt_timeout(definition, queues)
    except Exception as exc:
        return Failed(JobError.from_exception(exc), None)
    try:
        async with asyncio.timeout(timeout.total_seconds()) as deadline:
            token = _deadline.set(deadline)
            try:
                result = await definition(make_context(definition), value)
            finally:
                _deadline.reset(token)
    except SuspendJob as suspend:
        return Suspended(suspend.wake_at)
    except TimeoutError as exc:
        timed_out = JobTimeoutError(f"job {job_name!r} attempt {attempt} exceeded {timeout}")
        return _failed(definition, attempt, timed_out if deadline.expired() else exc)
    except Exception as exc:
        return _failed(definition, attempt, exc)
    try:
        return Succeeded(definition.dump_result(result))
    except TypeError as exc:
        return Failed(JobError.from_exception(exc), None)


def _failed(definition: JobDefinition[Any, Any], attempt: int, exc: Exception) -> Failed:
    retry_in = None if isinstance(exc, _FATAL) else definition.retry.delay_after(attempt)
    return Failed(JobError.from_exception(exc), retry_in)
