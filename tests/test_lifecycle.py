"""The lifecycle core as a table: every outcome, with and without a cancel."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from jobkit_engine import JobError, JobInfo, JobStatus
from jobkit_engine.runtime import (
    Cancelled,
    Failed,
    Finish,
    Interrupted,
    RunAgain,
    Succeeded,
    Suspended,
    applied,
    settle,
)

NOW = datetime(2030, 1, 1, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)
OOPS = JobError("ConnectionError", "oops")
CANCELLED = Finish(JobStatus.CANCELLED)

TABLE = [
    # outcome, cancel requested, decision
    (Succeeded({"n": 1}), False, Finish(JobStatus.SUCCEEDED, result={"n": 1})),
    (Succeeded({"n": 1}), True, CANCELLED),
    (Suspended(LATER), False, RunAgain(JobStatus.SLEEPING, at=LATER, resume=True)),
    (Suspended(LATER), True, CANCELLED),
    (Failed(OOPS, None), False, Finish(JobStatus.FAILED, error=OOPS)),
    (Failed(OOPS, None), True, CANCELLED),
    (
        Failed(OOPS, timedelta(seconds=30)),
        False,
        RunAgain(JobStatus.SCHEDULED, at=NOW + timedelta(seconds=30), error=OOPS),
    ),
    (Failed(OOPS, timedelta(seconds=30)), True, CANCELLED),
    (Failed(OOPS, timedelta(0)), False, RunAgain(JobStatus.SCHEDULED, at=NOW, error=OOPS)),
    (Cancelled(), False, CANCELLED),
    (Cancelled(), True, CANCELLED),
    (Interrupted(), False, RunAgain(JobStatus.QUEUED, resume=True)),
    (Interrupted(), True, CANCELLED),
]


@pytest.mark.parametrize(("outcome", "cancel_requested", "decision"), TABLE)
def test_settle(outcome: object, cancel_requested: bool, decision: object) -> None:
    assert settle(outcome, now=NOW, cancel_requested=cancel_requested) == decision  # type: ignore[arg-type]


def test_settle_refuses_what_is_not_an_outcome() -> None:
    with pytest.raises(TypeError):
        settle("done", now=NOW)  # type: ignore[arg-type]


RUNNING = JobInfo(
    job_id="j", job_name="n", queue="q", status=JobStatus.RUNNING, engine="e", error=OOPS
)


def test_applied_finish() -> None:
    done = applied(RUNNING, Finish(JobStatus.SUCCEEDED, result=3), NOW)
    assert (done.status, done.result, done.error, done.finished_at) == (
        JobStatus.SUCCEEDED,
        3,
        None,
        NOW,
    )
    failed = applied(RUNNING, Finish(JobStatus.FAILED, error=JobError("X", "y")), NOW)
    assert failed.error == JobError("X", "y")
    assert applied(RUNNING, CANCELLED, NOW).error == OOPS  # the last failure stays in view


def test_applied_run_again() -> None:
    waiting = applied(replace(RUNNING, error=None), RunAgain(JobStatus.SCHEDULED, LATER), NOW)
    assert (waiting.status, waiting.scheduled_for, waiting.finished_at) == (
        JobStatus.SCHEDULED,
        LATER,
        None,
    )
