"""One attempt of a job, engine-agnostic: the thin processor every engine calls.

An engine hands over a job name, its JSON payload and a way to build the context; it gets
back an `Outcome` and only has to record it (and schedule the retry or the wake-up).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from contextvars import ContextVar
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from jobkit.errors import JobTimeoutError, PayloadValidationError, UnknownJobError
from jobkit.queues import QueueRegistry, default_queues
from jobkit_engine._context import JobContext, SuspendJob
from jobkit_engine._definition import JobDefinition
from jobkit_engine._failures import is_fatal
from jobkit_engine._lifecycle import Failed, Outcome, Succeeded, Suspended
from jobkit_engine._registry import JobRegistry, default_registry
from jobkit_engine._status import JobError
from jobkit_engine._steps import DEFAULT_MAX_BYTES, encode

if TYPE_CHECKING:
    from jobkit_engine.strict import StrictMode

_deadline: ContextVar[asyncio.Timeout | None] = ContextVar("jobkit_attempt_deadline", default=None)


def attempt_deadline() -> asyncio.Timeout | None:
    """The timeout of the attempt running in this task, or None outside `execute_job`.

    An engine whose long sleeps keep the attempt alive (Temporal's durable timers) moves it
    back by the time slept, so that a sleep does not count against the job's timeout, as
    on engines where a long sleep ends the execution.
    """
    return _deadline.get()


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
    max_bytes: int = DEFAULT_MAX_BYTES,
    rng: random.Random | None = None,
    strict: StrictMode | None = None,
) -> Outcome:
    """Resolve `job_name`, validate `payload`, run the handler once, classify the result.

    Only registered jobs run: an unknown name or a payload that does not validate fails
    the job for good, as does a result that is not JSON or longer than `max_bytes`.
    Cancellation (`asyncio.CancelledError`) is left to the engine. `rng` draws the retry
    jitter (a workflow passes its deterministic one).
    With `strict`, the handler runs under strict mode's checks (`jobkit_engine.strict`).
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
                context = make_context(definition)
                if strict is None:
                    result = await definition(context, value)
                else:
                    result = await strict.run(definition, context, value)
            finally:
                _deadline.reset(token)
    except SuspendJob as suspend:
        return Suspended(suspend.wake_at)
    except TimeoutError as exc:
        timed_out = JobTimeoutError(f"job {job_name!r} attempt {attempt} exceeded {timeout}")
        return _failed(definition, attempt, timed_out if deadline.expired() else exc, rng)
    except Exception as exc:
        return _failed(definition, attempt, exc, rng)
    try:
        return Succeeded(encode(result, f"the result of job {job_name!r}", max_bytes))
    except Exception as exc:  # not JSON, or too large: retrying cannot fix it
        return Failed(JobError.from_exception(exc), None)


def _failed(
    definition: JobDefinition[Any, Any],
    attempt: int,
    exc: Exception,
    rng: random.Random | None,
) -> Failed:
    fatal = is_fatal(exc) or isinstance(exc, UnknownJobError | PayloadValidationError)
    retry_in = None if fatal else definition.retry.delay_after(attempt, rng)
    return Failed(JobError.from_exception(exc), retry_in)
