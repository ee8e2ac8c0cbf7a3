"""The inline engine's operator capabilities beyond the conformance suite: how a job's
history reads while it runs, after a cancel in a sleep and after a timeout."""

from __future__ import annotations

from datetime import timedelta

import pytest

from jobkit_dispatch import cancel_job, dispatch_job
from jobkit_dispatch.conformance import jobs
from jobkit_dispatch.conformance._files import count, open_gate
from jobkit_dispatch.engines.recovery import JobQuery, StepOutcome
from jobkit_dispatch.testing import inline_engine, wait_for_job
from jobkit_engine import JobStatus, ManualClock


def _outcomes(engine: object, job_id: str) -> list[tuple[str, str, StepOutcome]]:
    detail = engine.describe(job_id)  # type: ignore[attr-defined]
    return [(s.step_id, s.kind, s.outcome) for s in detail.steps]


def test_a_running_job_shows_its_running_step_and_attempt(workdir: str) -> None:
    with inline_engine() as engine:
        d = dispatch_job(jobs.gated, {"workdir": workdir, "gate": "g"})
        wait_for_job(d.job_id, lambda i: count(workdir, "started-g") == 1)
        try:
            assert _outcomes(engine, d.job_id) == [
                ("started", "run", StepOutcome.SUCCEEDED),
                ("gate", "run", StepOutcome.RUNNING),
            ]
            [attempt] = engine.describe(d.job_id).attempts
            assert (attempt.number, attempt.outcome, attempt.finished_at) == (1, "running", None)
        finally:
            open_gate(workdir, "g")
        assert wait_for_job(d.job_id).status == JobStatus.SUCCEEDED
        assert engine.describe(d.job_id).attempts[0].outcome == "succeeded"


def test_a_job_cancelled_in_a_sleep_resumes_it_when_retried(workdir: str) -> None:
    clock = ManualClock()
    with inline_engine(clock) as engine:
        d = dispatch_job(jobs.sleeper, {"workdir": workdir, "seconds": 3600})
        wake = wait_for_job(d.job_id, lambda i: i.status == JobStatus.SLEEPING).scheduled_for
        assert cancel_job(d.job_id) is True
        assert _outcomes(engine, d.job_id)[1] == ("nap", "sleep", StepOutcome.INTERRUPTED)
        assert engine.describe(d.job_id).attempts[-1].outcome == "cancelled"
        engine.retry(d.job_id)
        # The sleep goes on to the wake time it had, without running the step before it.
        info = wait_for_job(d.job_id, lambda i: i.status == JobStatus.SLEEPING, skip_time=False)
        assert info.scheduled_for == wake
        assert _outcomes(engine, d.job_id)[1] == ("nap", "sleep", StepOutcome.SLEEPING)
        assert wait_for_job(d.job_id).result == ["before", "after"]
        assert (count(workdir, "before"), count(workdir, "after")) == (1, 1)
        assert [o for _, _, o in _outcomes(engine, d.job_id)] == [StepOutcome.SUCCEEDED] * 3


def test_a_step_cut_short_by_the_timeout_is_interrupted(workdir: str) -> None:
    with inline_engine() as engine:
        d = dispatch_job(jobs.slow, {"workdir": workdir, "gate": "never"})
        assert wait_for_job(d.job_id).error.type == "JobTimeoutError"
        [(step_id, _, outcome)] = _outcomes(engine, d.job_id)
        assert (step_id, outcome) == ("gate", StepOutcome.INTERRUPTED)
        assert engine.describe(d.job_id).steps[0].error is None


def test_purge_takes_only_ended_statuses_and_a_page_one_job_at_least() -> None:
    with inline_engine() as engine:
        with pytest.raises(ValueError, match="only ended jobs"):
            engine.purge(jobs.QUEUE, JobStatus.RUNNING)
        with pytest.raises(ValueError, match="limit=0"):
            engine.list_jobs(JobQuery(limit=0))


def test_a_retried_job_is_listed_open_again_where_it_was_created(workdir: str) -> None:
    clock = ManualClock()
    with inline_engine(clock) as engine:
        d = dispatch_job(jobs.fatal, {"workdir": workdir})
        failed = wait_for_job(d.job_id)
        clock.advance(timedelta(hours=1))
        later = wait_for_job(
            dispatch_job(jobs.gated, {"workdir": workdir, "gate": "g"}).job_id,
            lambda i: i.status == JobStatus.RUNNING,
        )
        try:
            engine.retry(d.job_id)  # queued behind the running job: the queue has one slot
            jobs_listed = engine.list_jobs(JobQuery()).jobs
            assert [(i.job_id, i.status) for i in jobs_listed] == [
                (later.job_id, JobStatus.RUNNING),
                (d.job_id, JobStatus.QUEUED),
            ]
            assert jobs_listed[1].created_at == failed.created_at
        finally:
            open_gate(workdir, "g")
        assert wait_for_job(d.job_id).status == JobStatus.FAILED
        assert engine.describe(d.job_id).retries == 1
