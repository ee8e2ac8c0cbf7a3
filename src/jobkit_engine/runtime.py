"""What an engine needs to run jobs: the public module for engine writers.

An engine stores jobs and moves them between workers; everything about *running* one is
here, shared by every engine, so that a job behaves the same wherever it runs:

- `execute_job(job_name, payload, attempt, make_context)` runs one execution of a job's
  handler (only registered jobs; payload validated; the attempt's timeout; the result
  encoded within the size limit) and returns an `Outcome`.
- `settle(outcome, now=..., cancel_requested=...)` decides what the outcome means — a
  `Finish` or a `RunAgain` — and `applied(info, decision, now)` writes it into a `JobInfo`.
  The engine stores and schedules the decision; it decides nothing itself.
- `MemoSteps` is `ctx.step`: the step rules, with hooks for where step results live (a
  `StepMemo`), where a step function runs (`StepRunner`), how a long sleep waits
  (`Suspender`) and what to check before a step starts.
- `log_outcome(decision, ...)`, called after storing a decision, logs the job's outcome
  in the words every engine uses, on the `jobkit.jobs` logger (`JOB_LOGGER`);
  `log_handed_back` the same for a job handed back to a worker that knows it.
- `StrictMode` (`jobkit_engine.strict`), passed to `execute_job(..., strict=...)`, holds
  handler code outside steps to Temporal's rules: what the inline test helpers do, and
  what a worker does with `JOBKIT_STRICT=1` (`StrictMode.from_settings(settings)`).
- The step rules and encodings, for an engine that runs step functions somewhere else
  (Temporal runs them as activities): `step_ref` / `resolve_ref`, `run_step_function`,
  `encode_exception` / `decode_exception`, `encode` and `json_size`.

Nothing here imports an engine.
"""

from jobkit_engine._codec import from_json_for, to_json
from jobkit_engine._context import (
    MISSING,
    WAKE_AT_KEY,
    DictStepMemo,
    MemoSteps,
    StepMemo,
    StepRunner,
    Suspender,
    SuspendJob,
)
from jobkit_engine._execution import attempt_deadline, attempt_timeout, execute_job
from jobkit_engine._failures import (
    FatalStepFailedError,
    RemoteTraceback,
    StepFailedError,
    decode_exception,
    encode_exception,
    is_fatal,
)
from jobkit_engine._joblog import JOB_LOGGER, log_handed_back, log_outcome
from jobkit_engine._lifecycle import (
    Cancelled,
    Decision,
    Failed,
    Finish,
    Interrupted,
    Outcome,
    RunAgain,
    Succeeded,
    Suspended,
    applied,
    settle,
)
from jobkit_engine._steps import (
    DEFAULT_MAX_BYTES,
    encode,
    encode_call,
    json_size,
    resolve_ref,
    run_step_function,
    step_ref,
    typed_arguments,
)
from jobkit_engine.strict import StrictMode

__all__ = [
    "DEFAULT_MAX_BYTES",
    "JOB_LOGGER",
    "MISSING",
    "WAKE_AT_KEY",
    "Cancelled",
    "Decision",
    "DictStepMemo",
    "Failed",
    "FatalStepFailedError",
    "Finish",
    "Interrupted",
    "MemoSteps",
    "Outcome",
    "RemoteTraceback",
    "RunAgain",
    "StepFailedError",
    "StepMemo",
    "StepRunner",
    "StrictMode",
    "Succeeded",
    "SuspendJob",
    "Suspended",
    "Suspender",
    "applied",
    "attempt_deadline",
    "attempt_timeout",
    "decode_exception",
    "encode",
    "encode_call",
    "encode_exception",
    "execute_job",
    "from_json_for",
    "is_fatal",
    "json_size",
    "log_handed_back",
    "log_outcome",
    "resolve_ref",
    "run_step_function",
    "settle",
    "step_ref",
    "to_json",
    "typed_arguments",
]
