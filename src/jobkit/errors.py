"""Every error jobkit raises, in one tree.

```
JobkitError
├── ConfigurationError            settings, queues or engines that cannot work as given
│   ├── UnknownQueueError         a queue name with no QueueSpec
│   └── EngineNotInstalledError   an engine whose extra is not installed
├── JobDefinitionError            a @job that cannot be registered as written
│   └── DuplicateJobError         two different handlers under one job name
├── UnknownJobError               a job name nobody registered
├── PayloadValidationError        a payload that does not match the job's model
├── PayloadTooLargeError          a payload, step argument or result past the size limit
├── DispatchArgumentError         a dispatch_job argument that cannot work (delay=, at=, key)
├── EngineUnavailableError        an engine cannot take jobs right now (the dispatcher falls back)
├── JobMovedError                 an engine's marker: this job id went to another engine
├── DispatchError                 no engine could take the job (names every cause)
├── JobNotFoundError              get_job / cancel_job for an id no engine knows
├── JobNotRetryableError          retry of a job that is not failed or cancelled
├── CorruptJobError               a stored job record that cannot be read back
├── StepError                     misuse of the step API
│   └── DuplicateStepError        one step id used twice in one job
├── NonRetryableError             raised by a job: fail now, do not retry
│   ├── StrictModeError           strict mode: handler code outside steps that Temporal
│   │                             would refuse (a call, a blocked loop, a replay that differs)
│   └── HistoryLimitError         a Temporal job's history neared the server's hard limit
├── JobTimeoutError               an attempt ran past the job's timeout
└── JobCancelledError             the job was cancelled while it ran
```

Two ends of a job on Temporal are no exceptions that anything raises, only the type of the
job's `JobError` that `get_job` reports: `WorkflowBlockedError` (handler code outside
steps blocked its workflow thread) and `NondeterminismError` (a replay took another path);
their names are constants of the Temporal engine (`engines/temporal/_model.py`).

This module lives in `jobkit`, the lowest of the three packages, so that queue and
settings code can raise the same types; `jobkit_engine` re-exports the ones a job author
meets.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class JobkitError(Exception):
    """Base class of every error jobkit raises."""


class ConfigurationError(JobkitError):
    """Settings, queues or engines that cannot work as configured."""


class UnknownQueueError(ConfigurationError, LookupError):
    """A queue name that has no `QueueSpec` in the queue registry."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.queue = name
        known_list = ", ".join(sorted(known)) or "none"
        super().__init__(
            f"unknown queue {name!r} (known: {known_list}); "
            f"register it with jobkit.register_queue(QueueSpec({name!r}, ...))"
        )


#: The name jobkit is published under (`jobkit` on PyPI is an unrelated project); the
#: import packages are `jobkit`, `jobkit_engine` and `jobkit_dispatch` all the same.
DISTRIBUTION = "jobkit-dispatch"


def install_hint(extra: str) -> str:
    """The command that installs an extra, e.g. `pip install 'jobkit-dispatch[temporal]'`."""
    return f"pip install '{DISTRIBUTION}[{extra}]'"


class EngineNotInstalledError(ConfigurationError, ImportError):
    """An engine whose optional dependencies are missing."""

    def __init__(self, engine: str, extra: str, missing: str) -> None:
        self.engine = engine
        self.extra = extra
        super().__init__(
            f"the {engine} engine needs {missing!r}, which is not installed: {install_hint(extra)}"
        )


class JobDefinitionError(JobkitError, TypeError):
    """A `@job` handler that cannot be registered as written."""


class DuplicateJobError(JobDefinitionError):
    """Two different handlers registered under one job name."""


class UnknownJobError(JobkitError, LookupError):
    """A job name that no `@job` registered in this process.

    On a worker, given `grace` (seconds) and the `modules` it imports: the job was handed
    back for that long and no worker that knows it took it (a rolling deploy that never
    finished, or a worker fleet that lacks the module defining it).
    """

    def __init__(
        self,
        name: str,
        known: Iterable[str] = (),
        *,
        grace: float | None = None,
        modules: Iterable[str] = (),
    ) -> None:
        self.job_name = name
        self.grace = grace
        known_list = ", ".join(sorted(known)) or "none"
        fix = "import the module that defines it (jobkit worker --import myapp.jobs)"
        if grace is None:
            message = f"no job named {name!r} is registered (registered: {known_list}); {fix}"
        else:
            module_list = ", ".join(sorted(modules)) or "none"
            message = (
                f"no worker that knows job {name!r} took it within {grace:g}s "
                f"(JOBKIT_UNKNOWN_JOB_GRACE); the worker that gave up on it imports "
                f"{module_list} and registers {known_list}; deploy workers that {fix}"
            )
        super().__init__(message)


class PayloadValidationError(JobkitError, ValueError):
    """A payload that does not validate against the job's payload model.

    `errors` holds pydantic's structured errors (field location, message, input).
    """

    def __init__(self, job_name: str, errors: list[Mapping[str, Any]]) -> None:
        self.job_name = job_name
        self.errors = errors
        details = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())) or '<payload>'}: {e.get('msg')}"
            for e in errors
        )
        super().__init__(f"invalid payload for job {job_name!r}: {details}")


class PayloadTooLargeError(JobkitError, ValueError):
    """JSON past `JOBKIT_MAX_PAYLOAD_BYTES`: a job's payload or result, or a step's
    arguments or result. One limit on every engine (Temporal refuses payloads over 2 MB),
    checked before anything is sent, so a job that fits on one engine fits on all."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        self.what = what
        self.size = size
        self.limit = limit
        super().__init__(
            f"{what} is {size:,} bytes of JSON, over the limit of {limit:,} "
            "(JOBKIT_MAX_PAYLOAD_BYTES); keep large data elsewhere (a file, a bucket, a "
            "table) and pass a reference to it"
        )


class DispatchArgumentError(JobkitError, ValueError):
    """An argument of `dispatch_job` that cannot work as given: a negative `delay=`, a naive
    `at=`, both at once, an empty idempotency key. Raised before anything is enqueued;
    `argument` names it."""

    def __init__(self, argument: str, problem: str) -> None:
        self.argument = argument
        super().__init__(f"dispatch_job({argument}=...): {problem}")


class EngineUnavailableError(JobkitError):
    """An engine cannot take a job right now (server down, no worker); try another one.

    `outcome_unknown` is True when the request reached the engine but its answer was lost
    (a read timed out, the connection dropped after sending): it may have been applied, so
    the job may exist there all the same. False when nothing was sent (refused, connect
    timeout, circuit open).
    """

    def __init__(self, message: str = "", *, outcome_unknown: bool = False) -> None:
        super().__init__(message)
        self.outcome_unknown = outcome_unknown


class JobMovedError(JobkitError):
    """The engine asked to enqueue a job holds only a marker saying that the job with this
    id went to another engine (`engine`, for `reason`). The dispatcher answers with that
    job (`created=False`); callers of `dispatch_job` never see this error."""

    def __init__(self, job_id: str, engine: str, reason: str) -> None:
        self.job_id = job_id
        self.engine = engine
        self.reason = reason
        super().__init__(f"job {job_id} moved to {engine} ({reason})")


class DispatchError(JobkitError):
    """No engine could take the job. `causes` maps each engine tried to why it refused."""

    def __init__(self, job_name: str, causes: Mapping[str, str]) -> None:
        self.job_name = job_name
        self.causes = dict(causes)
        why = "; ".join(f"{engine}: {cause}" for engine, cause in self.causes.items())
        super().__init__(f"could not dispatch job {job_name!r}: {why or 'no engine configured'}")


class JobNotFoundError(JobkitError, LookupError):
    """No engine knows a job with this id (never dispatched, or its record expired)."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no job with id {job_id!r}")


class JobNotRetryableError(JobkitError):
    """A retry of a job that has not ended failed or cancelled: a queued or running job
    runs already, and a succeeded one would run its side effects again (dispatch it anew)."""

    def __init__(self, job_id: str, status: str) -> None:
        self.job_id = job_id
        self.status = status
        super().__init__(
            f"job {job_id!r} is {status}: only a failed or cancelled job can be retried"
        )


class CorruptJobError(JobkitError):
    """A job's stored record that cannot be read back or run: damaged, or written by
    something other than jobkit (a field that is no number, not JSON, not UTF-8; a record
    with no status; a payload that does not decode). `job_id` names the job, and the
    message the field and what is wrong with it."""

    def __init__(self, job_id: str, problem: str) -> None:
        self.job_id = job_id
        self.problem = problem
        super().__init__(f"job {job_id!r}: {problem}")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.job_id, self.problem)


class StepError(JobkitError):
    """The step API was used in a way that cannot be replayed safely."""


class DuplicateStepError(StepError):
    """One step id used twice within one job: replay could not tell the two apart."""

    def __init__(self, step_id: str) -> None:
        self.step_id = step_id
        super().__init__(
            f"step id {step_id!r} was already used in this job; step ids must be unique "
            "within a job (add an index, e.g. f'fetch-{i}')"
        )


class NonRetryableError(JobkitError):
    """Raise from a job or a step to fail the job at once, whatever its retry policy."""


class StrictModeError(NonRetryableError):
    """Strict mode found handler code outside steps that would break on Temporal: a call
    its workflow sandbox or event loop refuses, a block of the event loop past its deadlock
    threshold, or a replay against the recorded step results that takes another path.

    `job_name` names the job, `problem` what was found (the call, the steps), `fix` what to
    change; retrying cannot help, so the job fails at once.
    """

    def __init__(self, job_name: str, problem: str, fix: str) -> None:
        self.job_name = job_name
        self.problem = problem
        self.fix = fix
        super().__init__(f"strict mode: job {job_name!r} {problem}. {fix}")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.job_name, self.problem, self.fix)


class HistoryLimitError(NonRetryableError):
    """A job on Temporal reached `history_limit_events` in its workflow history, below the
    server's hard limit (51,200 events) at which Temporal would end it with no error of
    jobkit's. What would have added events next (a step, a sleep, a retry, another wait
    for a slot) did not start; split the job into several jobs."""


class JobTimeoutError(JobkitError, TimeoutError):
    """An attempt ran longer than the job's timeout; the attempt counts as failed."""


class JobCancelledError(JobkitError):
    """The job was cancelled through `cancel_job`."""
