"""The status model every engine reports in: `JobStatus`, `JobInfo`, `Progress`, `JobError`."""

from __future__ import annotations

import traceback as tb
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any


class JobStatus(StrEnum):
    QUEUED = "queued"  # waiting for a worker
    SCHEDULED = "scheduled"  # waiting for its time: a delay, or the backoff before a retry
    RUNNING = "running"  # a worker is executing it
    SLEEPING = "sleeping"  # parked in a durable sleep; no worker is held
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


@dataclass(frozen=True)
class Progress:
    """What a job last said through `report_progress`: a fraction in [0, 1] and a message."""

    fraction: float
    message: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"progress fraction must be within [0, 1], got {self.fraction}")


@dataclass(frozen=True)
class JobError:
    """Why an attempt failed: the exception's class name, its message and traceback."""

    type: str
    message: str
    traceback: str | None = None

    @classmethod
    def from_exception(cls, exc: BaseException) -> JobError:
        return cls(type(exc).__name__, str(exc), "".join(tb.format_exception(exc)))


@dataclass(frozen=True)
class JobInfo:
    """A job as `get_job` reports it, whichever engine ran it.

    `result` is the handler's return value (decoded into its annotated type when the job
    is registered in the calling process, JSON otherwise). `error` is the last failure,
    kept while a retry is scheduled. `scheduled_for` is when a scheduled job runs or a
    sleeping job wakes. `reason` says why the dispatcher chose `engine`.
    """

    job_id: str
    job_name: str
    queue: str
    status: JobStatus
    engine: str
    reason: str = ""
    attempts: int = 0
    max_attempts: int = 1
    result: Any = None
    error: JobError | None = None
    progress: Progress | None = None
    created_at: datetime | None = None
    scheduled_for: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal
