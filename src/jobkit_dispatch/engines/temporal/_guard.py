"""The history guard: a job stops cleanly before Temporal's history limit stops it.

Everything a job waits for adds events to its workflow history: a step (about six), a
sleep's timer, a retry's backoff timer, each round of asking for a slot of its queue
(about five a round, at most one round in 5 minutes while it stays queued). Temporal warns
at 10,240 events and terminates a workflow at 51,200, which would end the job with no error
of its own. So before each of these the workflow calls `HistoryGuard.check`: past
`history_warn_events` it logs one warning per job, and at `history_limit_events` what
came next does not start and the job fails with a `HistoryLimitError` that says how to
split it.

The check reads only the history length Temporal hands the workflow, so a replay takes
the same path; the warning is logged once because a replay passes the same point with
logging off (temporalio's workflow logger is silent during replay).
"""

from __future__ import annotations

from dataclasses import dataclass

from temporalio import workflow

from jobkit.errors import HistoryLimitError
from jobkit_dispatch.engines.temporal._model import JobInput

TEMPORAL_HISTORY_LIMIT = 51_200  # events; the server's default hard limit


@dataclass
class HistoryGuard:
    """The history thresholds of one job, and whether it was warned already."""

    warn_at: int
    fail_at: int
    warned: bool = False

    @classmethod
    def of(cls, job: JobInput) -> HistoryGuard:
        return cls(job.history_warn_events, job.history_limit_events)

    def check(self, what: str) -> None:
        """Raise `HistoryLimitError` if `what` (e.g. "step 'fetch'") would start past the
        limit; warn once past the warning threshold."""
        info = workflow.info()
        events = info.get_current_history_length()
        if events >= self.fail_at:
            raise HistoryLimitError(
                f"job {info.workflow_id!r} has {events} events in its Temporal history, at "
                f"jobkit's limit of {self.fail_at} (Temporal stops a workflow at "
                f"{TEMPORAL_HISTORY_LIMIT}), so {what} was not started; split the job into "
                "several jobs, e.g. one job per batch of items"
            )
        if events >= self.warn_at and not self.warned:
            self.warned = True
            workflow.logger.warning(
                "job %s has %d events in its Temporal history (warning at %d); it fails at "
                "%d, before Temporal's limit of %d: consider splitting it into several jobs",
                info.workflow_id,
                events,
                self.warn_at,
                self.fail_at,
                TEMPORAL_HISTORY_LIMIT,
            )
