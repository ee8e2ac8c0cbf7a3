"""A job's steps, read from its workflow's history: for `describe`, and to seed a retry.

A step's `run` is an activity whose activity id is the step id; a step's sleep is a timer
whose summary is the step id (`_workflow_steps`). The other activities and timers of a
job are jobkit's own (the fence against RQ, a retry's backoff, a slot recheck) and are
not steps. A step that ran in several attempts (it failed, then ran again) is one step:
it keeps when it first began, and ends as its last run ended.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import HistoryEvent
from temporalio.converter import DataConverter

from jobkit_dispatch.engines.recovery import StepOutcome, StepRecord
from jobkit_dispatch.engines.temporal._model import FENCE_RQ, JobInput, SeedStep
from jobkit_dispatch.engines.temporal._steps import FAILURE_KEY
from jobkit_engine import JobError
from jobkit_engine.runtime import MISSING, WAKE_AT_KEY

INTERNAL_TIMERS = frozenset({"retry backoff", "slot recheck"})
"""Summaries of timers the workflow sets for itself: no step sleeps on them."""


@dataclass
class Trace:
    """One step as the history shows it. `value` is its memo entry once it has one (a
    run's JSON result, a sleep's wake time), else `MISSING`."""

    step_id: str
    kind: str
    outcome: StepOutcome
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: JobError | None = None
    value: Any = MISSING


def job_input(events: Sequence[HistoryEvent], converter: DataConverter) -> JobInput | None:
    """The workflow's argument, from its first event (None if it is no `JobInput`)."""
    if not events or events[0].WhichOneof("attributes") != (
        "workflow_execution_started_event_attributes"
    ):
        return None
    payloads = events[0].workflow_execution_started_event_attributes.input.payloads
    try:
        return converter.payload_converter.from_payloads(payloads, [JobInput])[0]
    except Exception:  # started by something other than jobkit: no input to read
        return None


def traces(
    events: Iterable[HistoryEvent],
    converter: DataConverter,
    *,
    closed: bool,
    pending: Mapping[str, datetime | None] | None = None,
) -> list[Trace]:
    """The steps of one run, in the order they first began. `closed`: the run has ended
    (a step it left unfinished was interrupted); `pending`: the start times of the
    activities running now, by activity id."""
    reader = _Reader(converter, closed, pending or {})
    for event in events:
        reader.read(event)
    return list(reader.steps.values())


def seed(job: JobInput | None, run: Sequence[Trace]) -> list[SeedStep]:
    """What a retry starts from: the steps the job's runs completed and the sleeps they
    reached (a sleep keeps its wake time, so one that is over is not slept again); the
    others only for when they first began."""
    kept: dict[str, SeedStep] = {} if job is None else {s.step_id: s for s in job.seed}
    for trace in run:
        earlier = kept.get(trace.step_id)
        done = trace.value is not MISSING
        kept[trace.step_id] = SeedStep(
            step_id=trace.step_id,
            kind=trace.kind,
            done=done,
            value=trace.value if done else None,
            started_at=earlier.started_at if earlier else trace.started_at,
            finished_at=trace.finished_at,
        )
    return list(kept.values())


def timeline(job: JobInput | None, run: Sequence[Trace], now: datetime) -> list[StepRecord]:
    """`describe`'s steps: those earlier runs completed, then this run's."""
    steps: dict[str, StepRecord] = {}
    for step in [] if job is None else job.seed:
        over = step.kind == "run" or (step.finished_at is not None and step.finished_at <= now)
        outcome = StepOutcome.SUCCEEDED if step.done and over else StepOutcome.INTERRUPTED
        steps[step.step_id] = StepRecord(
            step.step_id, step.kind, outcome, step.started_at, step.finished_at
        )
    for trace in run:
        earlier = steps.get(trace.step_id)
        started = earlier.started_at if earlier is not None else trace.started_at
        steps[trace.step_id] = StepRecord(
            trace.step_id, trace.kind, trace.outcome, started, trace.finished_at, trace.error
        )
    return list(steps.values())


def _time(event: HistoryEvent) -> datetime:
    return event.event_time.ToDatetime(tzinfo=UTC)


class _Reader:
    def __init__(
        self, converter: DataConverter, closed: bool, pending: Mapping[str, datetime | None]
    ) -> None:
        self.converter = converter
        self.closed = closed
        self.pending = pending
        self.steps: dict[str, Trace] = {}
        self.by_event: dict[int, Trace] = {}  # a scheduled activity's or started timer's

    def read(self, event: HistoryEvent) -> None:
        kind = event.WhichOneof("attributes")
        handler = getattr(self, f"_{kind}", None) if kind else None
        if handler is not None:
            handler(event)

    def _begin(self, event: HistoryEvent, step_id: str, kind: str, outcome: StepOutcome) -> None:
        earlier = self.steps.get(step_id)
        trace = Trace(step_id, kind, outcome, started_at=None)
        if earlier is not None:  # a later attempt runs it again: still the same step
            trace.started_at, trace.value = earlier.started_at, earlier.value
        self.steps[step_id] = self.by_event[event.event_id] = trace

    def _activity_task_scheduled_event_attributes(self, event: HistoryEvent) -> None:
        attributes = event.activity_task_scheduled_event_attributes
        if attributes.activity_type.name == FENCE_RQ:
            return
        step_id = attributes.activity_id
        running = StepOutcome.INTERRUPTED if self.closed else StepOutcome.RUNNING
        self._begin(event, step_id, "run", running)
        trace = self.steps[step_id]
        if trace.started_at is None and step_id in self.pending:
            trace.started_at = self.pending[step_id]

    def _activity_task_started_event_attributes(self, event: HistoryEvent) -> None:
        trace = self.by_event.get(event.activity_task_started_event_attributes.scheduled_event_id)
        if trace is not None and trace.started_at is None:
            trace.started_at = _time(event)

    def _activity_task_completed_event_attributes(self, event: HistoryEvent) -> None:
        attributes = event.activity_task_completed_event_attributes
        trace = self.by_event.get(attributes.scheduled_event_id)
        if trace is None:
            return
        values = self.converter.payload_converter.from_payloads(attributes.result.payloads)
        trace.value = values[0] if values else None
        self._end(trace, event, StepOutcome.SUCCEEDED)

    def _activity_task_failed_event_attributes(self, event: HistoryEvent) -> None:
        attributes = event.activity_task_failed_event_attributes
        trace = self.by_event.get(attributes.scheduled_event_id)
        if trace is not None:
            self._end(trace, event, StepOutcome.FAILED, self._error(attributes.failure))

    def _activity_task_timed_out_event_attributes(self, event: HistoryEvent) -> None:
        attributes = event.activity_task_timed_out_event_attributes
        trace = self.by_event.get(attributes.scheduled_event_id)
        if trace is not None:
            error = JobError("JobTimeoutError", f"step {trace.step_id!r} timed out")
            self._end(trace, event, StepOutcome.FAILED, error)

    def _activity_task_canceled_event_attributes(self, event: HistoryEvent) -> None:
        attributes = event.activity_task_canceled_event_attributes
        trace = self.by_event.get(attributes.scheduled_event_id)
        if trace is not None:
            self._end(trace, event, StepOutcome.INTERRUPTED)

    def _timer_started_event_attributes(self, event: HistoryEvent) -> None:
        summary = self._summary(event)
        if not summary or summary in INTERNAL_TIMERS:
            return
        waiting = StepOutcome.INTERRUPTED if self.closed else StepOutcome.SLEEPING
        self._begin(event, summary, "sleep", waiting)
        trace = self.steps[summary]
        started = _time(event)
        trace.started_at = trace.started_at or started
        duration = event.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta()
        trace.finished_at = started + duration  # when it wakes
        trace.value = {WAKE_AT_KEY: trace.finished_at.isoformat()}

    def _timer_fired_event_attributes(self, event: HistoryEvent) -> None:
        trace = self.by_event.get(event.timer_fired_event_attributes.started_event_id)
        if trace is not None:
            self._end(trace, event, StepOutcome.SUCCEEDED)

    def _timer_canceled_event_attributes(self, event: HistoryEvent) -> None:
        trace = self.by_event.get(event.timer_canceled_event_attributes.started_event_id)
        if trace is not None:
            trace.outcome = StepOutcome.INTERRUPTED  # it keeps its wake time

    def _end(
        self,
        trace: Trace,
        event: HistoryEvent,
        outcome: StepOutcome,
        error: JobError | None = None,
    ) -> None:
        trace.outcome, trace.finished_at, trace.error = outcome, _time(event), error

    def _summary(self, event: HistoryEvent) -> str | None:
        if not event.HasField("user_metadata") or not event.user_metadata.HasField("summary"):
            return None
        try:
            value = self.converter.payload_converter.from_payload(event.user_metadata.summary)
        except Exception:  # a summary jobkit did not write
            return None
        return value if isinstance(value, str) else None

    def _error(self, failure: Failure) -> JobError:
        """A step's error: the exception jobkit encoded into the failure's details."""
        info = failure.application_failure_info
        details = info.details.payloads if failure.HasField("application_failure_info") else []
        try:
            values = self.converter.payload_converter.from_payloads(details) if details else []
        except Exception:
            values = []
        encoded = values[0].get(FAILURE_KEY) if values and isinstance(values[0], dict) else None
        if isinstance(encoded, dict):
            return JobError(
                str(encoded.get("type") or info.type or "StepFailedError"),
                str(encoded.get("message", failure.message)),
                encoded.get("traceback") or failure.stack_trace or None,
            )
        return JobError(info.type or "ActivityError", failure.message, failure.stack_trace or None)
