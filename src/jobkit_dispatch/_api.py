"""The four calls an application makes, each with its async twin."""

from __future__ import annotations

import asyncio
import warnings
from datetime import datetime
from typing import Any

from jobkit.durations import Duration
from jobkit_dispatch._dispatch import _SETTING, Dispatched, aget_dispatcher, get_dispatcher
from jobkit_engine import JobDefinition, JobInfo

_warned: set[str] = set()


def _warn_if_in_event_loop(call: str) -> None:
    """The sync calls wait on Redis or Temporal: inside a running event loop that wait
    stalls every other task of the loop. Say so once per call, naming the async twin."""
    if call in _warned:
        return
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return  # no loop in this thread: the sync call is the right one
    _warned.add(call)
    warnings.warn(
        f"{call}() was called inside a running event loop, which it blocks while it waits "
        f"on Redis or Temporal; use `await a{call}(...)` in async code",
        RuntimeWarning,
        stacklevel=3,
    )


def dispatch_job(
    job: JobDefinition[Any, Any] | str,
    payload: Any = None,
    *,
    delay: Duration | None = None,
    at: datetime | None = None,
    queue: str | None = None,
    idempotency_key: str | None = None,
    pickup_timeout: float | object | None = _SETTING,
) -> Dispatched:
    """Hand a job to a background worker and return at once.

    `job` is a `@job` definition or a job name; `payload` a dict or the job's model. The
    payload is validated first (`PayloadValidationError`, nothing enqueued); `delay`
    (seconds or timedelta) or `at` (aware datetime) defer the job; `queue` overrides the
    job's queue; `idempotency_key` makes a repeat return the first job; `pickup_timeout`
    (seconds, default `JOBKIT_PICKUP_TIMEOUT`) waits for an RQ worker to start the job and
    moves it to the next engine if none does.
    Raises `UnknownJobError`, `PayloadValidationError`, or `DispatchError` when no engine
    can take the job.
    """
    _warn_if_in_event_loop("dispatch_job")
    return get_dispatcher().dispatch(
        job,
        payload,
        delay=delay,
        at=at,
        queue=queue,
        idempotency_key=idempotency_key,
        pickup_timeout=pickup_timeout,
    )


async def adispatch_job(
    job: JobDefinition[Any, Any] | str,
    payload: Any = None,
    *,
    delay: Duration | None = None,
    at: datetime | None = None,
    queue: str | None = None,
    idempotency_key: str | None = None,
    pickup_timeout: float | object | None = _SETTING,
) -> Dispatched:
    """`dispatch_job` for async code."""
    return await (await aget_dispatcher()).adispatch(
        job,
        payload,
        delay=delay,
        at=at,
        queue=queue,
        idempotency_key=idempotency_key,
        pickup_timeout=pickup_timeout,
    )


def get_job(job_id: str) -> JobInfo:
    """The job's status, result or error, progress, attempts, engine and reason.

    Raises `JobNotFoundError` when no engine knows the id.
    """
    _warn_if_in_event_loop("get_job")
    return get_dispatcher().get(job_id)


async def aget_job(job_id: str) -> JobInfo:
    return await (await aget_dispatcher()).aget(job_id)


def cancel_job(job_id: str) -> bool:
    """Cancel a queued, scheduled, sleeping or running job.

    True when the job is cancelled (a running job stops at its next await); False when it
    had already finished. Raises `JobNotFoundError` for an unknown id.
    """
    _warn_if_in_event_loop("cancel_job")
    return get_dispatcher().cancel(job_id)


async def acancel_job(job_id: str) -> bool:
    return await (await aget_dispatcher()).acancel(job_id)
