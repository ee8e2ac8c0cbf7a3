"""The lifecycle core: what happens to a job after one execution of its handler.

Every engine runs an execution, gets an `Outcome`, asks `settle` what it means, and only
stores and schedules the `Decision` it returns. Retry or fail, resume after a sleep, hand
back after an interrupted worker, and cancellation versus completion are decided here
once, so the engines cannot drift apart. `settle` is pure: no clock, no I/O, no engine.

Cancellation wins: once a cancel was accepted (`cancel_requested`), the job ends
`cancelled`, whatever the execution ended with — a handler that finished just after the
cancel does not make it `succeeded`. An engine whose store is shared (RQ) applies the same
rule again inside the atomic write of the decision, where a cancel may land last.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from jobkit_engine._status import JobError, JobInfo, JobStatus

# -- what one execution ended with ---------------------------------------------------------


@dataclass(frozen=True)
class Succeeded:
    """The handler returned; `result` is its JSON."""

    result: Any


@dataclass(frozen=True)
class Suspended:
    """A long `step.sleep` ended the execution; the job resumes at `wake_at`."""

    wake_at: datetime


@dataclass(frozen=True)
class Failed:
    """The attempt failed. `retry_in` is the backoff of the job's retry policy, or None
    when the failure is final (non-retryable, or out of attempts)."""

    error: JobError
    retry_in: timedelta | None


@dataclass(frozen=True)
class Cancelled:
    """The handler was interrupted because the job was cancelled."""


@dataclass(frozen=True)
class Interrupted:
    """The worker stopped the handler for its own reasons (shutdown, abort): the job goes
    back to the queue and the interrupted attempt does not count."""


Outcome = Succeeded | Suspended | Failed | Cancelled | Interrupted

# -- what the engine does next -------------------------------------------------------------


@dataclass(frozen=True)
class Finish:
    """The job ends with `status` (succeeded, failed or cancelled)."""

    status: JobStatus
    result: Any = None
    error: JobError | None = None


@dataclass(frozen=True)
class RunAgain:
    """The job runs again: `status` until then (scheduled, sleeping, or queued when `at`
    is None), `resume` when the next execution continues this attempt instead of starting
    a new one, `error` the failure shown while a retry waits."""

    status: JobStatus
    at: datetime | None = None
    resume: bool = False
    error: JobError | None = None


Decision = Finish | RunAgain

_CANCELLED = Finish(JobStatus.CANCELLED)


def settle(outcome: Outcome, *, now: datetime, cancel_requested: bool = False) -> Decision:
    """What an execution's `outcome` means for the job, at `now`."""
    if cancel_requested:
        return _CANCELLED
    match outcome:
        case Succeeded(result):
            return Finish(JobStatus.SUCCEEDED, result=result)
        case Suspended(wake_at):
            return RunAgain(JobStatus.SLEEPING, at=wake_at, resume=True)
        case Failed(error, None):
            return Finish(JobStatus.FAILED, error=error)
        case Failed(error, retry_in):
            return RunAgain(JobStatus.SCHEDULED, at=now + retry_in, error=error)
        case Cancelled():
            return _CANCELLED
        case Interrupted():
            return RunAgain(JobStatus.QUEUED, resume=True)
    raise TypeError(f"not an outcome: {outcome!r}")


def applied(info: JobInfo, decision: Decision, now: datetime) -> JobInfo:
    """`info` after `decision`: for an engine that keeps jobs as `JobInfo` records.

    Success clears the last error; a cancelled job and a retry keep it in view.
    """
    if isinstance(decision, Finish):
        error = decision.error or info.error
        return replace(
            info,
            status=decision.status,
            result=decision.result,
            error=None if decision.status == JobStatus.SUCCEEDED else error,
            scheduled_for=None,
            finished_at=now,
        )
    return replace(
        info,
        status=decision.status,
        scheduled_for=decision.at,
        error=decision.error if decision.error is not None else info.error,
    )
