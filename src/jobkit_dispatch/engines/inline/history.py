"""What the inline engine remembers of a job's past, for `describe`: every attempt (of
every round of retries) and the job's steps with their times and outcomes.

The engine learns of a step from the step machinery's own hooks, so no job code changes:
`before_step` says a step function is about to run, the memo's `save` that a step
completed (a run's result) or that a sleep began (its wake time). A step function that
raised is never saved: the execution's outcome says how it ended.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from jobkit.errors import JobTimeoutError
from jobkit_dispatch.engines.recovery import AttemptRecord, StepOutcome, StepRecord
from jobkit_engine import JobError, JobStatus
from jobkit_engine.runtime import (
    WAKE_AT_KEY,
    Cancelled,
    Decision,
    DictStepMemo,
    Failed,
    Finish,
    Outcome,
    RunAgain,
    Succeeded,
)

RUNNING = "running"


@dataclass
class _Step:
    kind: str
    outcome: StepOutcome
    started_at: datetime
    finished_at: datetime | None = None
    error: JobError | None = None


@dataclass
class _Attempt:
    number: int
    outcome: str
    started_at: datetime
    finished_at: datetime | None = None
    error: JobError | None = None


@dataclass
class JobHistory:
    """Attempts oldest first; steps in the order they first began (a step run again after
    a retry keeps its place and shows its latest run). Mutated under the engine's lock."""

    attempts: list[_Attempt] = field(default_factory=list)
    steps: dict[str, _Step] = field(default_factory=dict)
    retries: int = 0

    # -- attempts ----------------------------------------------------------------------

    def attempt_began(self, number: int, at: datetime) -> None:
        self.attempts.append(_Attempt(number, RUNNING, at))

    def execution_ended(self, outcome: Outcome, decision: Decision, at: datetime) -> None:
        """One execution's `outcome`, as `settle` decided it: the attempt ends unless the
        job goes on in it (a sleep), and steps left open end with it."""
        if isinstance(decision, Finish):
            self._end_attempt(decision.status.value, at, decision.error)
        elif decision.status == JobStatus.SCHEDULED:  # the backoff before the next attempt
            self._end_attempt("retrying", at, decision.error)
        cancelled = isinstance(outcome, Cancelled) or (
            isinstance(decision, Finish) and decision.status == JobStatus.CANCELLED
        )
        if cancelled:
            self._end_open_runs(StepOutcome.INTERRUPTED, None)
        elif isinstance(outcome, Failed):
            if outcome.error.type == JobTimeoutError.__name__:  # cut short, not its failure
                self._end_open_runs(StepOutcome.INTERRUPTED, None)
            else:  # its exception is what ended the attempt (unless the handler caught it)
                self._end_open_runs(StepOutcome.FAILED, outcome.error)
        elif isinstance(outcome, Succeeded):  # it raised, and the handler caught that
            self._end_open_runs(StepOutcome.FAILED, None)
        self._end_sleeps(at, interrupted=not isinstance(decision, RunAgain))

    def job_ended(self, status: JobStatus, at: datetime) -> None:
        """The job ended while no execution ran (a cancel of a sleeping or waiting job)."""
        self._end_attempt(status.value, at, None)
        self._end_sleeps(at, interrupted=True)

    def _end_attempt(self, outcome: str, at: datetime, error: JobError | None) -> None:
        if self.attempts and self.attempts[-1].outcome == RUNNING:
            last = self.attempts[-1]
            last.outcome, last.finished_at, last.error = outcome, at, error

    # -- steps -------------------------------------------------------------------------

    def step_began(self, step_id: str, at: datetime) -> None:
        self._end_sleeps(at, interrupted=False)
        self.steps[step_id] = _Step("run", StepOutcome.RUNNING, at)

    def step_saved(self, step_id: str, value: Any, at: datetime) -> None:
        """The memo stored `value` for `step_id`: a run completed, or a sleep began."""
        if isinstance(value, dict) and WAKE_AT_KEY in value:
            self._end_sleeps(at, interrupted=False)
            wake_at = datetime.fromisoformat(value[WAKE_AT_KEY])
            self.steps[step_id] = _Step("sleep", StepOutcome.SLEEPING, at, wake_at)
            return
        step = self.steps.setdefault(step_id, _Step("run", StepOutcome.RUNNING, at))
        step.outcome, step.finished_at, step.error = StepOutcome.SUCCEEDED, at, None

    def new_round(self, *, from_scratch: bool) -> None:
        """An operator retry: the steps are forgotten with the memo, or kept, and then a
        sleep the job was interrupted in goes on (its wake time is in the memo)."""
        self.retries += 1
        if from_scratch:
            self.steps.clear()
            return
        for step in self.steps.values():
            if step.kind == "sleep" and step.outcome == StepOutcome.INTERRUPTED:
                step.outcome = StepOutcome.SLEEPING

    def _end_open_runs(self, outcome: StepOutcome, error: JobError | None) -> None:
        for step in self.steps.values():
            if step.kind == "run" and step.outcome == StepOutcome.RUNNING:
                step.outcome, step.error = outcome, error

    def _end_sleeps(self, at: datetime, *, interrupted: bool) -> None:
        """Sleeps whose wake time has come are over; with `interrupted`, the others too:
        the job will not wake from them (it failed or was cancelled)."""
        for step in self.steps.values():
            if step.kind != "sleep" or step.outcome != StepOutcome.SLEEPING:
                continue
            if step.finished_at is not None and step.finished_at <= at:
                step.outcome = StepOutcome.SUCCEEDED
            elif interrupted:
                step.outcome = StepOutcome.INTERRUPTED

    # -- what describe shows -----------------------------------------------------------

    def attempt_records(self) -> tuple[AttemptRecord, ...]:
        return tuple(
            AttemptRecord(a.number, a.outcome, a.started_at, a.finished_at, a.error)
            for a in self.attempts
        )

    def step_records(self, now: datetime) -> tuple[StepRecord, ...]:
        records = []
        for step_id, s in self.steps.items():
            outcome = s.outcome
            if outcome == StepOutcome.SLEEPING and s.finished_at and s.finished_at <= now:
                outcome = StepOutcome.SUCCEEDED  # due: the job wakes from it now
            records.append(
                StepRecord(step_id, s.kind, outcome, s.started_at, s.finished_at, s.error)
            )
        return tuple(records)


class ObservedMemo:
    """A `StepMemo` over the job's `DictStepMemo` that reports every value it stores."""

    def __init__(self, memo: DictStepMemo, on_save: Callable[[str, Any], None]) -> None:
        self._memo = memo
        self._on_save = on_save

    def get(self, step_id: str) -> Any:
        return self._memo.get(step_id)

    async def save(self, step_id: str, value: Any) -> None:
        await self._memo.save(step_id, value)
        self._on_save(step_id, value)
