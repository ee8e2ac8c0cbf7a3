"""What the client, the workflow and `get_job` agree on: names, the input, the memo.

A job's state lives in its workflow's memo (`MEMO_KEY`), written first by the client when
it starts the workflow and then by the workflow at each change. `get_job` therefore needs
one `DescribeWorkflowExecution` and no live worker.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from jobkit_engine import JobError, JobInfo, JobStatus, Progress
from jobkit_engine.runtime import DEFAULT_MAX_BYTES

WORKFLOW_NAME = "jobkit.job"
"""The one workflow type that runs every job."""

SLOT_SIGNAL = "jobkit.slot-free"
"""Sent by a worker to a queued job when a slot of its queue frees up."""

ACQUIRE_SLOT = "jobkit.acquire-slot"
"""The local activity that takes a slot of the job's queue on this worker."""

FENCE_RQ = "jobkit.fence-rq"
"""The activity that settles with a copy of the job RQ may hold."""

FENCE_WORKFLOW = "jobkit.fence"
"""The workflow, `<job id>/fence`, that settles with RQ for a job that did not wait: it is
not a job (`get_job` never reads it)."""

MEMO_KEY = "jobkit"

TERMINATION_KEY = "jobkit_error"
"""Names the `JobError` (type, message, traceback) in the details of a termination that
jobkit itself made, so `get_job` reports the job failed with it, not cancelled."""

CANCELLED_UNSTARTED = "jobkit: cancelled before a worker picked the job up"
"""The reason of the termination that cancels a job no worker has started."""

# Two ways a job fails on Temporal that no code raises as an exception: `get_job` reports
# them as the `JobError.type` of the failed job (see docs/engines/temporal.md).
BLOCKED_ERROR = "WorkflowBlockedError"
"""Handler code outside steps blocked the workflow thread past Temporal's deadlock
threshold; the block watchdog (`_watchdog`) terminated the job with this error."""

NONDETERMINISM_ERROR = "NondeterminismError"
"""A replay of the job took another path than its history (temporalio's `TMPRL1100`);
`get_job` reads it from the failed workflow (`_closed`)."""

# Temporal warns about a workflow's history at 10,240 events and terminates it at 51,200.
HISTORY_WARN_EVENTS = 10_240
HISTORY_LIMIT_EVENTS = 40_000

STEP_HEARTBEAT_TIMEOUT = 10.0
"""Seconds without a heartbeat after which a running step's worker counts as lost and the
step runs again on another worker: a killed worker's job is finished elsewhere some 11 s
later (this, the step retry's 1 s backoff, and at most the worker's 10 s sticky queue
timeout should the server still route the job's next workflow task to the dead worker).
It costs no traffic: a running step heartbeats about once a second anyway (the worker's
heartbeat throttle, which is how a cancellation reaches it), whatever the timeout. It only
bounds how long a worker whose event loop stalls (an `async` step that blocks) is trusted;
past it, the step runs a second time elsewhere."""

# Temporal refuses a memo past 32 KB (and a refused memo update fails the workflow task
# over and over), so what users write into it is cut to size.
_MESSAGE_LIMIT = 2000
_TRACEBACK_LIMIT = 4000  # a traceback's tail says the most


def _head(text: str | None, limit: int) -> str | None:
    return text if text is None or len(text) <= limit else text[: limit - 1] + "…"


def _tail(text: str | None, limit: int) -> str | None:
    return text if text is None or len(text) <= limit else "…" + text[-(limit - 1) :]


# An attempt log entry keeps less of its error than the job's last error does, and only the
# newest entries keep a traceback: the log must fit in the memo beside everything else.
ATTEMPT_LOG_LIMIT = 10
_LOGGED_TRACEBACKS = 2
_LOGGED_MESSAGE_LIMIT = 200
_LOGGED_TRACEBACK_LIMIT = 1500


class ErrorState(BaseModel):
    type: str
    message: str
    traceback: str | None = None

    @classmethod
    def of(cls, error: JobError) -> ErrorState:
        return cls(
            type=_head(error.type, 200) or "",
            message=_head(error.message, _MESSAGE_LIMIT) or "",
            traceback=_tail(error.traceback, _TRACEBACK_LIMIT),
        )

    @classmethod
    def brief(cls, error: JobError) -> ErrorState:
        """The error as an attempt log entry keeps it: shorter."""
        return cls(
            type=_head(error.type, 200) or "",
            message=_head(error.message, _LOGGED_MESSAGE_LIMIT) or "",
            traceback=_tail(error.traceback, _LOGGED_TRACEBACK_LIMIT),
        )

    def error(self) -> JobError:
        return JobError(self.type, self.message, self.traceback)


class AttemptState(BaseModel):
    """One attempt in the memo's log: `outcome` as `AttemptRecord.outcome` says."""

    number: int
    outcome: str
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: ErrorState | None = None


class SeedStep(BaseModel):
    """A step of an earlier run of the job, handed to the run that retries it. `done`: it
    completed (or it is a sleep that was reached), and `value` is its memo entry — the
    step's JSON result, or the sleep's wake time; a step that did not complete is here for
    `describe` only (when it first began)."""

    step_id: str
    kind: str  # "run" or "sleep"
    done: bool = True
    value: Any = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


class JobInput(BaseModel):
    """The workflow's argument: the job request plus what the workflow needs to run it."""

    job_name: str
    payload: Any = None
    queue: str
    reason: str = ""
    max_attempts: int = 1
    created_at: datetime
    scheduled_for: datetime | None = None
    sleep_threshold: float = 5.0  # seconds; longer sleeps free the job's slot
    # Seconds: how soon a lost worker is noticed.
    step_heartbeat_timeout: float | None = STEP_HEARTBEAT_TIMEOUT
    max_payload_bytes: int = DEFAULT_MAX_BYTES  # the JSON size limit of steps and the result
    history_warn_events: int = HISTORY_WARN_EVENTS  # log a warning once past this
    history_limit_events: int = HISTORY_LIMIT_EVENTS  # fail the job before a step past this
    fence_rq: bool = False  # RQ may hold a copy: settle with it before the job runs
    hand_over_rq: bool = False  # RQ may hold an earlier copy: settle with it, not waiting
    # A retry (`_retry`): the earlier runs' completed steps (none `from_scratch`), their
    # attempts, and how many times the job was retried.
    seed: list[SeedStep] = []
    earlier_attempts: list[AttemptState] = []
    retries: int = 0

    def seed_results(self) -> dict[str, Any]:
        """The step memo a retried run starts from."""
        return {step.step_id: step.value for step in self.seed if step.done}


_ENDED = {
    JobStatus.SUCCEEDED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "cancelled",
}


class ProgressState(BaseModel):
    fraction: float
    message: str | None = None

    @classmethod
    def of(cls, progress: Progress) -> ProgressState:
        return cls(fraction=progress.fraction, message=_head(progress.message, _MESSAGE_LIMIT))


class JobState(BaseModel):
    """The memo of a job's workflow: what `JobInfo` needs beyond the workflow's own status,
    close time and result."""

    job_name: str
    queue: str
    reason: str = ""
    status: JobStatus
    attempts: int = 0
    max_attempts: int = 1
    created_at: datetime | None = None
    scheduled_for: datetime | None = None
    started_at: datetime | None = None
    error: ErrorState | None = None
    progress: ProgressState | None = None
    # True until the fence against RQ has settled, or the workflow that settles it was
    # asked for: a cancelled job that no worker started is not ended before that.
    fencing: bool | None = None
    moved_to: str | None = None  # the engine that ran the job instead ("rq"): not this one
    retries: int = 0  # operator retries: each one a new run of the workflow
    # The job's attempts, earlier runs' too, oldest first; the newest `ATTEMPT_LOG_LIMIT`.
    # Written only with a memo change the workflow makes anyway (an attempt starts, waits
    # for its retry, fails the job): a job that succeeds or is cancelled ends with its
    # last attempt "running", and `describe` reads the end from the workflow's close.
    attempt_log: list[AttemptState] = []

    @classmethod
    def initial(cls, job: JobInput) -> JobState:
        return cls(
            job_name=job.job_name,
            queue=job.queue,
            reason=job.reason,
            status=JobStatus.QUEUED if job.scheduled_for is None else JobStatus.SCHEDULED,
            max_attempts=job.max_attempts,
            created_at=job.created_at,
            scheduled_for=job.scheduled_for,
            fencing=job.fence_rq or job.hand_over_rq or None,
            retries=job.retries,
            attempt_log=list(job.earlier_attempts),
        )

    def attempt_began(self, number: int, at: datetime) -> None:
        """Log attempt `number` as running (once: a resumed attempt is the same one)."""
        last = self.attempt_log[-1] if self.attempt_log else None
        if last is not None and last.number == number and last.outcome == "running":
            return
        self.attempt_log.append(AttemptState(number=number, outcome="running", started_at=at))
        self._trim_log()

    def attempt_ended(self, outcome: str, at: datetime, error: JobError | None) -> None:
        """Log how the running attempt ended."""
        last = self.attempt_log[-1] if self.attempt_log else None
        if last is None or last.outcome != "running":
            return
        last.outcome, last.finished_at = outcome, at
        last.error = None if error is None else ErrorState.brief(error)
        self._trim_log()

    def final_log(self, info: JobInfo) -> list[AttemptState]:
        """The attempt log with its last attempt ended as the job `info` did, when the
        workflow could not write that itself (see `attempt_log`)."""
        log = [entry.model_copy() for entry in self.attempt_log]
        outcome = _ENDED.get(info.status)
        if log and log[-1].outcome == "running" and outcome is not None:
            log[-1].outcome, log[-1].finished_at = outcome, info.finished_at
            if info.error is not None and info.status == JobStatus.FAILED:
                log[-1].error = ErrorState.brief(info.error)
        return log

    def _trim_log(self) -> None:
        del self.attempt_log[:-ATTEMPT_LOG_LIMIT]
        for entry in self.attempt_log[:-_LOGGED_TRACEBACKS]:
            if entry.error is not None and entry.error.traceback is not None:
                entry.error = entry.error.model_copy(update={"traceback": None})

    def memo(self) -> dict[str, Any]:
        return {MEMO_KEY: self.model_dump(mode="json", exclude_none=True)}

    def info(self, job_id: str, engine: str, **overrides: Any) -> JobInfo:
        fields: dict[str, Any] = {
            "job_id": job_id,
            "job_name": self.job_name,
            "queue": self.queue,
            "status": self.status,
            "engine": engine,
            "reason": self.reason,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "error": None if self.error is None else JobError(**self.error.model_dump()),
            "progress": None
            if self.progress is None
            else Progress(self.progress.fraction, self.progress.message),
            "created_at": self.created_at,
            "scheduled_for": self.scheduled_for,
            "started_at": self.started_at,
        }
        fields.update(overrides)
        return JobInfo(**fields)
