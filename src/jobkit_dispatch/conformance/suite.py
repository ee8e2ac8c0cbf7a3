"""The conformance tests. Every engine runs exactly this code (see the package docstring)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from jobkit.errors import (
    JobNotFoundError,
    PayloadValidationError,
    UnknownJobError,
)
from jobkit_dispatch import Dispatched, cancel_job, dispatch_job, get_job, idempotent_job_id
from jobkit_dispatch.conformance import jobs
from jobkit_dispatch.conformance._files import count, open_gate
from jobkit_dispatch.conformance.harness import Harness, requires
from jobkit_dispatch.conformance.portability import PortabilityConformance
from jobkit_dispatch.conformance.recovery import RecoveryConformance
from jobkit_dispatch.engines import JobRequest
from jobkit_dispatch.testing import use_engine
from jobkit_engine import JobInfo, JobStatus, Progress

SECOND = timedelta(seconds=1)


def _is(status: JobStatus) -> Callable[[JobInfo], bool]:
    return lambda info: info.status == status


def _close(actual: timedelta, expected: timedelta, slack: timedelta = timedelta(seconds=1)) -> bool:
    return expected <= actual <= expected + slack


class EngineConformance(PortabilityConformance, RecoveryConformance):
    """The job contract. Subclass it and provide a `harness` fixture."""

    @pytest.fixture
    def harness(self) -> Harness:
        raise NotImplementedError("provide a `harness` fixture returning a Harness")

    @pytest.fixture(autouse=True)
    def _installed(self, harness: Harness) -> Iterator[None]:
        with use_engine(harness.engine):
            yield

    @pytest.fixture
    def workdir(self, tmp_path: Path) -> str:
        return str(tmp_path)

    def _blocker(self, harness: Harness, workdir: str, gate: str = "blocker") -> Dispatched:
        """A job that holds the conformance queue's single slot until `gate` opens."""
        d = dispatch_job(jobs.gated, {"workdir": workdir, "gate": gate})
        harness.wait(d.job_id, _is(JobStatus.RUNNING))
        return d

    # -- results and validation -----------------------------------------------------------

    def test_result_round_trips_as_its_model(self, harness: Harness) -> None:
        d = dispatch_job("conformance.echo", {"text": "ab", "times": 2})
        info = harness.wait(d.job_id)
        assert info.status == JobStatus.SUCCEEDED, info.error
        assert info.result == jobs.EchoResult(text="abab", job_id=d.job_id, engine=d.engine)
        assert (info.engine, info.job_name, info.attempts) == (d.engine, "conformance.echo", 1)
        assert info.reason == d.reason

    def test_dispatch_by_definition_with_a_model_payload(self, harness: Harness) -> None:
        d = dispatch_job(jobs.echo, jobs.Echo(text="x"))
        assert harness.wait(d.job_id).result.text == "x"

    def test_handler_without_payload(self, harness: Harness) -> None:
        d = dispatch_job(jobs.no_payload)
        info = harness.wait(d.job_id)
        assert info.result == {"job_name": "conformance.no_payload", "attempt": 1}

    def test_bad_payload_is_rejected_before_enqueue(self, harness: Harness) -> None:
        key = uuid.uuid4().hex
        with pytest.raises(PayloadValidationError, match=r"conformance\.echo.*text"):
            dispatch_job(jobs.echo, {"times": "many"}, idempotency_key=key)
        with pytest.raises(JobNotFoundError):
            get_job(idempotent_job_id(jobs.echo.name, key))
        assert dispatch_job(jobs.echo, {"text": "ok"}, idempotency_key=key).created

    def test_unknown_job_name_is_rejected(self, harness: Harness) -> None:
        with pytest.raises(UnknownJobError, match=r"conformance\.missing"):
            dispatch_job("conformance.missing", {})

    def test_worker_runs_only_registered_jobs(self, harness: Harness) -> None:
        """A job no worker knows is handed back for one that does (a rolling deploy) for
        the engine's grace period, then fails with UnknownJobError; never sooner."""
        request = JobRequest(uuid.uuid4().hex, "os.system", {"command": "true"}, jobs.QUEUE, 3)
        started = time.monotonic()
        assert harness.engine.enqueue(request)
        info = harness.wait(request.job_id)
        waited = time.monotonic() - started
        assert info.status == JobStatus.FAILED
        assert info.error is not None and info.error.type == "UnknownJobError"
        assert "os.system" in info.error.message
        assert info.attempts <= 1
        assert waited >= harness.unknown_job_grace.total_seconds()

    def test_worker_rejects_a_payload_that_does_not_validate(self, harness: Harness) -> None:
        request = JobRequest(uuid.uuid4().hex, jobs.echo.name, {"times": "x"}, jobs.QUEUE, 3)
        assert harness.engine.enqueue(request)
        info = harness.wait(request.job_id)
        assert info.status == JobStatus.FAILED
        assert info.error is not None and info.error.type == "PayloadValidationError"

    def test_unknown_job_id(self, harness: Harness) -> None:
        with pytest.raises(JobNotFoundError):
            get_job("no-such-job")
        with pytest.raises(JobNotFoundError):
            cancel_job("no-such-job")

    # -- steps and retries ----------------------------------------------------------------

    def test_completed_steps_are_not_run_again_on_retry(
        self, harness: Harness, workdir: str
    ) -> None:
        d = dispatch_job(jobs.steps, {"workdir": workdir})
        info = harness.wait(d.job_id)
        assert info.status == JobStatus.SUCCEEDED, info.error
        assert info.result == {"total": 42, "attempt": 2}
        assert (count(workdir, "step-a"), count(workdir, "step-b")) == (1, 2)
        assert info.attempts == 2

    def test_duplicate_step_id_fails_the_job(self, harness: Harness, workdir: str) -> None:
        info = harness.wait(dispatch_job(jobs.duplicate_steps, {"workdir": workdir}).job_id)
        assert info.status == JobStatus.FAILED
        assert info.error is not None and info.error.type == "DuplicateStepError"
        assert info.attempts == 1

    def test_non_retryable_error_fails_at_once(self, harness: Harness, workdir: str) -> None:
        info = harness.wait(dispatch_job(jobs.fatal, {"workdir": workdir}).job_id)
        assert info.status == JobStatus.FAILED
        assert info.error is not None
        assert (info.error.type, info.error.message) == ("Rejected", "this input can never work")
        assert (info.attempts, count(workdir, "fatal")) == (1, 1)

    def test_retries_back_off_exponentially_then_fail(self, harness: Harness, workdir: str) -> None:
        d = dispatch_job(jobs.flaky, {"workdir": workdir, "failures": 99})
        for attempt, wait in (
            (1, jobs.FLAKY_RETRY.initial_delay),
            (2, 2 * jobs.FLAKY_RETRY.initial_delay),
        ):
            info = harness.wait(
                d.job_id, lambda i, a=attempt: i.attempts == a and i.status != JobStatus.RUNNING
            )
            assert info.status == JobStatus.SCHEDULED, info
            assert info.error is not None and info.error.type == "ConnectionError"
            assert info.scheduled_for and info.started_at
            assert _close(info.scheduled_for - info.started_at, wait), info
            assert count(workdir, "flaky") == attempt
        info = harness.wait(d.job_id)
        assert (info.status, info.attempts, info.max_attempts) == (JobStatus.FAILED, 3, 3)
        assert count(workdir, "flaky") == 3

    def test_a_retry_can_succeed(self, harness: Harness, workdir: str) -> None:
        info = harness.wait(dispatch_job(jobs.flaky, {"workdir": workdir, "failures": 1}).job_id)
        assert (info.status, info.result, info.attempts) == (JobStatus.SUCCEEDED, 2, 2)
        assert info.error is None

    def test_timeout_ends_the_attempt(self, harness: Harness, workdir: str) -> None:
        d = dispatch_job(jobs.slow, {"workdir": workdir, "gate": "never"})
        info = harness.wait(d.job_id)
        assert info.status == JobStatus.FAILED
        assert info.error is not None and info.error.type == "JobTimeoutError"
        open_gate(workdir, "never")
        assert count(workdir, "slow-finished") == 0

    # -- sleep ----------------------------------------------------------------------------

    def test_short_sleep_completes(self, harness: Harness, workdir: str) -> None:
        seconds = harness.short_sleep.total_seconds()
        info = harness.wait(
            dispatch_job(jobs.sleeper, {"workdir": workdir, "seconds": seconds}).job_id
        )
        assert (info.status, info.result) == (JobStatus.SUCCEEDED, ["before", "after"])
        assert (count(workdir, "before"), count(workdir, "after")) == (1, 1)

    def test_long_sleep_frees_the_worker_and_resumes(self, harness: Harness, workdir: str) -> None:
        requires(harness, "supports_durable_sleep")
        seconds = harness.long_sleep.total_seconds()
        d = dispatch_job(jobs.sleeper, {"workdir": workdir, "seconds": seconds})
        info = harness.wait(d.job_id, _is(JobStatus.SLEEPING))
        assert info.scheduled_for and info.started_at
        assert _close(info.scheduled_for - info.started_at, harness.long_sleep)
        # The queue has one slot: another job can only run if the sleeper gave it back.
        other = harness.wait(dispatch_job(jobs.echo, {"text": "meanwhile"}).job_id)
        assert other.status == JobStatus.SUCCEEDED
        assert get_job(d.job_id).status == JobStatus.SLEEPING
        info = harness.wait(d.job_id)
        assert (info.status, info.result, info.attempts) == (
            JobStatus.SUCCEEDED,
            ["before", "after"],
            1,
        )
        assert (count(workdir, "before"), count(workdir, "after")) == (1, 1)

    def test_sleep_until(self, harness: Harness, workdir: str) -> None:
        requires(harness, "supports_durable_sleep")
        wake = harness.now() + harness.long_sleep
        d = dispatch_job(jobs.sleeper, {"workdir": workdir, "until": wake})
        assert harness.wait(d.job_id, _is(JobStatus.SLEEPING)).scheduled_for == wake
        assert harness.wait(d.job_id).status == JobStatus.SUCCEEDED

    # -- progress, delays, idempotency ----------------------------------------------------

    def test_progress_is_visible_while_running(self, harness: Harness, workdir: str) -> None:
        requires(harness, "supports_progress")
        payload = {"workdir": workdir, "gate": "g", "progress": 0.5, "message": "half way"}
        d = dispatch_job(jobs.gated, payload)
        info = harness.wait(d.job_id, lambda i: i.progress is not None)
        assert (info.status, info.progress) == (JobStatus.RUNNING, Progress(0.5, "half way"))
        open_gate(workdir, "g")
        assert harness.wait(d.job_id).progress == Progress(0.5, "half way")

    def test_delayed_job_is_scheduled_then_runs(self, harness: Harness, workdir: str) -> None:
        requires(harness, "supports_delay")
        d = dispatch_job(jobs.echo, {"text": "later", "workdir": workdir}, delay=harness.long_sleep)
        info = get_job(d.job_id)
        assert info.status == JobStatus.SCHEDULED
        assert info.created_at and info.scheduled_for
        assert _close(info.scheduled_for - info.created_at, harness.long_sleep)
        assert count(workdir, "echo") == 0
        info = harness.wait(d.job_id)
        assert info.status == JobStatus.SUCCEEDED
        assert info.created_at <= info.started_at <= info.finished_at  # type: ignore[operator]
        assert info.started_at >= info.created_at + harness.long_sleep  # type: ignore[operator]

    def test_job_at_a_given_time(self, harness: Harness) -> None:
        requires(harness, "supports_delay")
        at = harness.now() + harness.long_sleep
        d = dispatch_job(jobs.echo, {"text": "at"}, at=at)
        assert get_job(d.job_id).scheduled_for == at
        info = harness.wait(d.job_id)
        assert info.status == JobStatus.SUCCEEDED and info.started_at >= at  # type: ignore[operator]

    def test_idempotency_key_returns_the_first_job(self, harness: Harness, workdir: str) -> None:
        payload = {"text": "once", "workdir": workdir}
        first = dispatch_job(jobs.echo, payload, idempotency_key="order-7")
        again = dispatch_job(jobs.echo, payload, idempotency_key="order-7")
        assert (again.job_id, first.created, again.created) == (first.job_id, True, False)
        other = dispatch_job(jobs.echo, payload, idempotency_key="order-8")
        assert other.job_id != first.job_id
        for d in (first, other):
            assert harness.wait(d.job_id).status == JobStatus.SUCCEEDED
        assert dispatch_job(jobs.echo, payload, idempotency_key="order-7").created is False
        assert count(workdir, "echo") == 2

    def test_status_goes_queued_running_succeeded(self, harness: Harness, workdir: str) -> None:
        blocker = self._blocker(harness, workdir)
        d = dispatch_job(jobs.gated, {"workdir": workdir, "gate": "second"})
        assert get_job(d.job_id).status == JobStatus.QUEUED
        open_gate(workdir, "blocker")
        harness.wait(d.job_id, _is(JobStatus.RUNNING))
        open_gate(workdir, "second")
        info = harness.wait(d.job_id)
        assert (info.status, info.result) == (JobStatus.SUCCEEDED, "second")
        assert harness.wait(blocker.job_id).status == JobStatus.SUCCEEDED

    # -- cancellation ---------------------------------------------------------------------

    def test_cancel_a_queued_job(self, harness: Harness, workdir: str) -> None:
        blocker = self._blocker(harness, workdir)
        d = dispatch_job(jobs.echo, {"text": "never", "workdir": workdir})
        assert get_job(d.job_id).status == JobStatus.QUEUED
        assert cancel_job(d.job_id) is True
        open_gate(workdir, "blocker")
        assert harness.wait(blocker.job_id).status == JobStatus.SUCCEEDED
        assert harness.wait(d.job_id).status == JobStatus.CANCELLED
        assert count(workdir, "echo") == 0

    def test_cancel_a_scheduled_job(self, harness: Harness, workdir: str) -> None:
        requires(harness, "supports_delay")
        d = dispatch_job(jobs.echo, {"text": "never", "workdir": workdir}, delay=harness.long_sleep)
        assert cancel_job(d.job_id) is True
        harness.advance(harness.long_sleep + SECOND)
        assert _settled(harness, d.job_id).status == JobStatus.CANCELLED
        assert count(workdir, "echo") == 0

    def test_cancel_a_sleeping_job(self, harness: Harness, workdir: str) -> None:
        requires(harness, "supports_durable_sleep")
        seconds = harness.long_sleep.total_seconds()
        d = dispatch_job(jobs.sleeper, {"workdir": workdir, "seconds": seconds})
        harness.wait(d.job_id, _is(JobStatus.SLEEPING))
        assert cancel_job(d.job_id) is True
        harness.advance(harness.long_sleep + SECOND)
        assert _settled(harness, d.job_id).status == JobStatus.CANCELLED
        assert (count(workdir, "before"), count(workdir, "after")) == (1, 0)

    def test_cancel_a_running_job(self, harness: Harness, workdir: str) -> None:
        requires(harness, "supports_cancel_running")
        d = self._blocker(harness, workdir, gate="held")
        assert cancel_job(d.job_id) is True
        info = harness.wait(d.job_id)
        assert info.status == JobStatus.CANCELLED
        open_gate(workdir, "held")
        assert count(workdir, "finished-held") == 0
        assert (
            harness.wait(dispatch_job(jobs.echo, {"text": "next"}).job_id).status
            == JobStatus.SUCCEEDED
        )

    def test_cancel_a_finished_job_changes_nothing(self, harness: Harness) -> None:
        d = dispatch_job(jobs.echo, {"text": "done"})
        assert harness.wait(d.job_id).status == JobStatus.SUCCEEDED
        assert cancel_job(d.job_id) is False
        assert get_job(d.job_id).status == JobStatus.SUCCEEDED


def _settled(harness: Harness, job_id: str) -> JobInfo:
    """The job once no more time needs to pass for it (a cancelled job must stay so)."""
    return harness.wait(job_id)
