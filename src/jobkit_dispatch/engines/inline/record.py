"""`JobRecord`: what the inline engine knows of one job, in memory."""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from jobkit_dispatch.engines.base import JobRequest
from jobkit_dispatch.engines.inline.history import JobHistory
from jobkit_dispatch.engines.recovery import JobDetail
from jobkit_engine import JobError, JobInfo, JobStatus, Progress
from jobkit_engine.runtime import DictStepMemo


@dataclass
class JobRecord:
    """The mutable state of one inline job; read and written under the engine's lock."""

    request: JobRequest
    status: JobStatus
    created_at: datetime
    scheduled_for: datetime | None = None
    attempts: int = 0
    resuming: bool = False  # the next execution continues an attempt after a sleep
    cancel_requested: bool = False
    clock_wait: datetime | None = None  # a running job blocked in a short sleep until then
    result: Any = None
    error: JobError | None = None
    progress: Progress | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    memo: DictStepMemo = field(default_factory=DictStepMemo)
    history: JobHistory = field(default_factory=JobHistory)
    task: asyncio.Task[None] | None = None

    def new_round(self, *, from_scratch: bool) -> None:
        """An operator retry: queued again with a fresh round of attempts under the same
        id and creation time; completed steps stay memoised unless `from_scratch`."""
        self.status, self.attempts, self.resuming = JobStatus.QUEUED, 0, False
        self.cancel_requested, self.clock_wait, self.scheduled_for = False, None, None
        self.result = self.error = self.progress = None
        self.started_at = self.finished_at = None
        if from_scratch:
            self.memo.data.clear()
        self.history.new_round(from_scratch=from_scratch)

    def detail(self, engine: str, now: datetime) -> JobDetail:
        return JobDetail(
            info=self.info(engine),
            payload=copy.deepcopy(self.request.payload),
            attempts=self.history.attempt_records(),
            steps=self.history.step_records(now),
            retries=self.history.retries,
        )

    def info(self, engine: str) -> JobInfo:
        r = self.request
        return JobInfo(
            job_id=r.job_id,
            job_name=r.job_name,
            queue=r.queue,
            status=self.status,
            engine=engine,
            reason=r.reason,
            attempts=self.attempts,
            max_attempts=r.max_attempts,
            result=self.result,
            error=self.error,
            progress=self.progress,
            created_at=self.created_at,
            scheduled_for=self.scheduled_for,
            started_at=self.started_at,
            finished_at=self.finished_at,
        )
