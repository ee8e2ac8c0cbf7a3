"""jobkit_engine: jobs written once, for any engine.

Defines jobs (`@job`), what a handler receives (`JobContext`), the registry, the error
types and the status model; `jobkit_engine.runtime` is what engines use to run jobs. It
imports no engine: `rq`, `temporalio` and `redis` are never
imported from here, so a job module loads in any worker.
"""

from jobkit.errors import (
    DispatchArgumentError,
    DispatchError,
    DuplicateJobError,
    DuplicateStepError,
    JobCancelledError,
    JobDefinitionError,
    JobkitError,
    JobNotFoundError,
    JobTimeoutError,
    NonRetryableError,
    PayloadTooLargeError,
    PayloadValidationError,
    StepError,
    StrictModeError,
    UnknownJobError,
    UnknownQueueError,
)
from jobkit_engine._clock import Clock, ManualClock, SystemClock
from jobkit_engine._context import DictStepMemo, JobContext, MemoSteps, StepMemo, Steps
from jobkit_engine._definition import JobDefinition, job
from jobkit_engine._execution import execute_job
from jobkit_engine._lifecycle import Failed, Outcome, Succeeded, Suspended
from jobkit_engine._registry import JobRegistry, default_registry, import_job_modules
from jobkit_engine._retry import NO_RETRY, Retry
from jobkit_engine._status import TERMINAL_STATUSES, JobError, JobInfo, JobStatus, Progress
from jobkit_engine.strict import StrictMode

__all__ = [
    "NO_RETRY",
    "TERMINAL_STATUSES",
    "Clock",
    "DictStepMemo",
    "DispatchArgumentError",
    "DispatchError",
    "DuplicateJobError",
    "DuplicateStepError",
    "Failed",
    "JobCancelledError",
    "JobContext",
    "JobDefinition",
    "JobDefinitionError",
    "JobError",
    "JobInfo",
    "JobNotFoundError",
    "JobRegistry",
    "JobStatus",
    "JobTimeoutError",
    "JobkitError",
    "ManualClock",
    "MemoSteps",
    "NonRetryableError",
    "Outcome",
    "PayloadTooLargeError",
    "PayloadValidationError",
    "Progress",
    "Retry",
    "StepError",
    "StepMemo",
    "Steps",
    "StrictMode",
    "StrictModeError",
    "Succeeded",
    "Suspended",
    "SystemClock",
    "UnknownJobError",
    "UnknownQueueError",
    "default_registry",
    "execute_job",
    "import_job_modules",
    "job",
]
