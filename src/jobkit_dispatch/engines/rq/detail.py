"""One RQ job in full, read from its hash alone (one HGETALL): `RQEngine.describe`.

Everything is already in the hash, written by the scripts that move the job, so reading
it costs no other command and running it no other write:

- the payload: RQ's `args[0]`;
- attempts: one `jk_att:<round>:<number>` record per attempt that was retried (FINISH,
  RECOVER) or that ended a round an operator retried (RETRY); the latest attempt — still
  going on, or the one that ended the job — is read from the job's own fields;
- steps: `jk_step:<id>` (the memo: a result, or a sleep's wake time), `jk_began:<id>`
  (when a step function was let start, Redis' clock) and `jk_saved:<id>` (when the memo
  was saved: a run's end, a sleep's start). A step that began and has no memo belongs to
  the first attempt that had not ended when it began, and takes that attempt's outcome.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rq.job import Job
from rq.serializers import JSONSerializer

from jobkit_dispatch.engines.recovery import AttemptRecord, JobDetail, StepOutcome, StepRecord
from jobkit_dispatch.engines.rq import keys
from jobkit_dispatch.engines.rq.codec import INFO_FIELDS, decode_info
from jobkit_engine import JobError, JobInfo, JobStatus
from jobkit_engine.runtime import WAKE_AT_KEY

# An attempt that failed with one of these did not fail in its step: the step was cut off.
_CUT_OFF = frozenset({"AbandonedJobError", "JobTimeoutError"})
_ENDED_OUTCOMES = {
    JobStatus.SUCCEEDED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "cancelled",
}


@dataclass(frozen=True)
class _Attempt:
    round: int
    record: AttemptRecord


def decode_detail(
    job_id: str, raw: dict[bytes, bytes], engine: str, now: datetime, connection: Any
) -> JobDetail | None:
    """The HGETALL reply of a job → `JobDetail`, or None when it is no job of jobkit's.
    Raises `CorruptJobError` when a field `get_job` reads is damaged."""
    fields = {key.decode(errors="replace"): value for key, value in raw.items()}
    info = decode_info(job_id, [fields.get(name) for name in INFO_FIELDS], engine)
    if info is None:
        return None
    retries = _int(fields.get("jk_retries"))
    attempts = _attempts(fields, info, retries)
    return JobDetail(
        info=info,
        payload=_payload(job_id, raw, connection),
        attempts=tuple(a.record for a in attempts),
        steps=_steps(fields, info, [a.record for a in attempts], now),
        retries=retries,
        extra={"worker": _text(fields.get("worker_name")), "rq_status": _text(fields["status"])},
    )


def _payload(job_id: str, raw: dict[bytes, bytes], connection: Any) -> Any:
    try:
        job = Job(job_id, connection=connection, serializer=JSONSerializer)
        job.restore(raw)
        return job.args[0] if job.args else None
    except Exception:  # a payload RQ cannot decode: the rest of the job is still worth showing
        return None


def _attempts(fields: dict[str, bytes], info: JobInfo, retries: int) -> list[_Attempt]:
    found: dict[tuple[int, int], AttemptRecord] = {}
    for name, value in fields.items():
        if name.startswith(keys.attempt_field_prefix):
            parsed = _attempt(name, value)
            if parsed is not None:
                found[(parsed.round, parsed.record.number)] = parsed.record
    current = info.attempts
    if current > 0 and (retries, current) not in found:
        ongoing = _ongoing(fields, info)
        if ongoing is not None:
            found[(retries, current)] = ongoing
    return [_Attempt(r, found[(r, n)]) for r, n in sorted(found)]


def _attempt(name: str, value: bytes) -> _Attempt | None:
    """One `jk_att:<round>:<number>` record; None if it is not one (skipped, not fatal)."""
    try:
        round_, _ = name[len(keys.attempt_field_prefix) :].split(":")
        data = json.loads(value)
        error = data.get("error")
        return _Attempt(
            int(round_),
            AttemptRecord(
                number=int(data["number"]),
                outcome=str(data["outcome"]),
                started_at=_time(data.get("started")),
                finished_at=_time(data.get("finished")),
                error=None if not error else JobError(**error),
            ),
        )
    except (ValueError, TypeError, KeyError):
        return None


def _ongoing(fields: dict[str, bytes], info: JobInfo) -> AttemptRecord | None:
    """The latest attempt when no script wrote its record: still going on (running, or
    paused in a sleep or a hand-back), or ended by a script that writes none."""
    started = _time(fields.get("jk_attempt_started", fields.get("jk_started_at")))
    if info.status.is_terminal:
        error = info.error if info.status == JobStatus.FAILED else None
        outcome = _ENDED_OUTCOMES[info.status]
        return AttemptRecord(info.attempts, outcome, started, info.finished_at, error)
    if info.status == JobStatus.RUNNING or "jk_resume" in fields:
        return AttemptRecord(info.attempts, "running", started)
    return None


def _steps(
    fields: dict[str, bytes], info: JobInfo, attempts: list[AttemptRecord], now: datetime
) -> tuple[StepRecord, ...]:
    prefixes = (keys.step_field_prefix, keys.step_began_prefix, keys.step_saved_prefix)
    ids = {name[len(p) :] for name in fields for p in prefixes if name.startswith(p)}
    placed = []
    for step_id in ids:
        memo = fields.get(keys.step_field_prefix + step_id)
        began = _time(fields.get(keys.step_began_prefix + step_id))
        saved = _time(fields.get(keys.step_saved_prefix + step_id))
        wake = _wake_at(memo)
        if wake is not None:
            step = StepRecord(step_id, "sleep", _sleep_outcome(wake, info, now), saved, wake)
        elif memo is not None:
            step = StepRecord(step_id, "run", StepOutcome.SUCCEEDED, began, saved)
        else:
            outcome, error = _unfinished(began, attempts, info)
            step = StepRecord(step_id, "run", outcome, began, None, error)
        first = step.started_at or saved
        placed.append((math.inf if first is None else first.timestamp(), step_id, step))
    return tuple(step for *_, step in sorted(placed))


def _wake_at(memo: bytes | None) -> datetime | None:
    if memo is None:
        return None
    try:
        value = json.loads(memo)
        if isinstance(value, dict) and set(value) == {WAKE_AT_KEY}:
            return datetime.fromisoformat(value[WAKE_AT_KEY])
    except (ValueError, TypeError):
        pass
    return None


def _sleep_outcome(wake: datetime, info: JobInfo, now: datetime) -> StepOutcome:
    if info.status.is_terminal:
        ended = info.finished_at or now
        return StepOutcome.SUCCEEDED if wake <= ended else StepOutcome.INTERRUPTED
    return StepOutcome.SUCCEEDED if wake <= now else StepOutcome.SLEEPING


def _unfinished(
    began: datetime | None, attempts: list[AttemptRecord], info: JobInfo
) -> tuple[StepOutcome, JobError | None]:
    """A step that began and has no memo: how the attempt it began in ended."""
    attempt = _attempt_at(began, attempts)
    if attempt is None:
        return StepOutcome.INTERRUPTED, None
    if attempt.outcome == "running":
        return StepOutcome.RUNNING, None
    error = attempt.error
    if attempt.outcome in ("failed", "retrying") and error and error.type not in _CUT_OFF:
        return StepOutcome.FAILED, error
    return StepOutcome.INTERRUPTED, None


def _attempt_at(began: datetime | None, attempts: list[AttemptRecord]) -> AttemptRecord | None:
    """The attempt a step that began at `began` belongs to: the first that had not ended
    by then (the last attempt, if none says)."""
    if began is not None:
        for attempt in attempts:
            if attempt.finished_at is None or began <= attempt.finished_at:
                return attempt
    return attempts[-1] if attempts else None


def _time(value: Any) -> datetime | None:
    try:
        return None if value is None else datetime.fromtimestamp(float(value), UTC)
    except (ValueError, TypeError, OverflowError):
        return None


def _int(value: bytes | None) -> int:
    try:
        return 0 if value is None else int(value)
    except ValueError:
        return 0


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode(errors="replace")
