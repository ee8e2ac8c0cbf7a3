"""Why a job's workflow closed, when the workflow could not record it in its memo.

The workflow writes a failed job's error into its memo itself. Three ends bypass it, and
`get_job` reads them from the workflow's close event instead (one history read, only for
such workflows):

- a **non-determinism error**: the job's replay took another path than its history (a
  step id or branch decided by the clock, randomness or the environment, or code changed
  under a running job); the worker fails the workflow (`TMPRL1100`);
- a **termination by jobkit**: the block watchdog (`_watchdog`) terminates a job whose
  handler blocks its workflow thread, with the job's error in the termination details;
- a **termination by anyone else** (an operator, `temporal workflow terminate`): the job
  was stopped on request, so it is cancelled, as is a job cancelled before any worker
  picked it up.
"""

from __future__ import annotations

from typing import Any

from jobkit_dispatch.engines.temporal._model import NONDETERMINISM_ERROR, TERMINATION_KEY
from jobkit_engine import JobError

_NONDETERMINISM_CODE = "[TMPRL1100]"  # how temporalio's worker marks the failure

NONDETERMINISM_FIX = (
    "took another path in code outside steps when Temporal replayed it (after a worker "
    "restart, or when the worker no longer had it cached), so it cannot continue. Code "
    "outside steps must be deterministic: derive step ids and branches from the "
    "payload, ctx.attempt and step results, never from the clock, random numbers, uuids "
    "or the environment (compute those in a ctx.step.run), and do not change the steps "
    "of a job while runs of it are in flight (give the new version a new job name)"
)


def failure_error(job_id: str, cause: BaseException | None) -> JobError:
    """The error of job `job_id`, whose workflow failed with `cause` and no error in its
    memo."""
    if cause is None:
        return JobError("WorkflowFailureError", "the workflow failed")
    kind = getattr(cause, "type", None) or type(cause).__name__
    message = str(cause)
    if kind == NONDETERMINISM_ERROR or message.startswith(_NONDETERMINISM_CODE):
        fix = f"job {job_id!r} {NONDETERMINISM_FIX}. Temporal said: {message}"
        return JobError(NONDETERMINISM_ERROR, fix)
    return JobError(kind, message)


def termination_error(details: Any) -> JobError | None:
    """The error jobkit gave when it terminated a workflow (the termination's `details`),
    or None for any other termination."""
    first = details[0] if isinstance(details, list | tuple) and details else None
    recorded = first.get(TERMINATION_KEY) if isinstance(first, dict) else None
    if not isinstance(recorded, dict):
        return None
    try:
        return JobError(str(recorded["type"]), str(recorded["message"]), recorded.get("traceback"))
    except KeyError:
        return None
