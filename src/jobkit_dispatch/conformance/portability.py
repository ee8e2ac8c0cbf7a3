"""The portability section of the conformance suite: the step rules and the truth of a
cancel, asserted the same on every engine.

A job falls back from RQ to Temporal exactly when Redis is in trouble, so a job that
works on one engine and breaks on another breaks at the worst moment. Each test here
states one answer that every engine must give; `EngineConformance` includes them.
"""

from __future__ import annotations

import uuid

import pytest

from jobkit.errors import JobNotFoundError, PayloadTooLargeError
from jobkit_dispatch import cancel_job, dispatch_job, get_job, idempotent_job_id
from jobkit_dispatch.conformance import portable_jobs as pj
from jobkit_dispatch.conformance._files import count, open_gate
from jobkit_dispatch.conformance.harness import Harness
from jobkit_engine import JobInfo, JobStatus


def _failed_at_once(info: JobInfo, error_type: str, *words: str) -> None:
    assert info.status == JobStatus.FAILED, info
    assert info.error is not None and info.error.type == error_type, info.error
    for word in words:
        assert word in info.error.message, info.error.message
    assert info.attempts == 1, "a broken rule is never retried"


def _requires_strict(harness: Harness) -> None:
    if not harness.strict:
        pytest.skip(f"{harness.engine.name} runs handlers without Temporal's workflow rules")


class PortabilityConformance:
    """Step rules and cancellation, identical on every engine."""

    KINDS = ("lambda", "closure", "partial", "bound-method", "stdlib")

    def test_step_functions_need_an_import_path(self, harness: Harness, workdir: str) -> None:
        ids = {
            kind: dispatch_job(pj.bad_step_function, {"workdir": workdir, "kind": kind}).job_id
            for kind in self.KINDS
        }
        for kind, job_id in ids.items():
            _failed_at_once(harness.wait(job_id), "StepError", "'bad'")
            assert count(workdir, kind) == 0, f"the {kind} step ran"

    def test_step_arguments_must_be_json(self, harness: Harness, workdir: str) -> None:
        info = harness.wait(dispatch_job(pj.non_json_argument, {"workdir": workdir}).job_id)
        _failed_at_once(info, "StepError", "arguments of step 'bad'", "not JSON")

    def test_arguments_arrive_as_json_or_as_annotated(self, harness: Harness) -> None:
        info = harness.wait(dispatch_job(pj.argument_types, {"workdir": "-"}).job_id)
        assert info.status == JobStatus.SUCCEEDED, info.error
        assert info.result == {"untyped": "dict", "point": "Point", "when": "datetime"}

    @pytest.mark.parametrize("kind", ["step-result", "step-arguments", "job-result"])
    def test_one_size_limit(self, harness: Harness, workdir: str, kind: str) -> None:
        info = harness.wait(dispatch_job(pj.oversized, {"workdir": workdir, "kind": kind}).job_id)
        what = {"step-result": "result of step", "step-arguments": "arguments of step"}
        _failed_at_once(info, "PayloadTooLargeError", what.get(kind, "result of job"))
        assert count(workdir, "big-text") == (1 if kind == "step-result" else 0)

    def test_a_payload_over_the_limit_is_refused_before_enqueue(self, harness: Harness) -> None:
        key = uuid.uuid4().hex
        with pytest.raises(PayloadTooLargeError, match="payload of job"):
            dispatch_job(pj.oversized, {"workdir": "x" * pj.BIG}, idempotency_key=key)
        with pytest.raises(JobNotFoundError):
            get_job(idempotent_job_id(pj.oversized.name, key))

    def test_an_unencodable_result_fails_at_once(self, harness: Harness, workdir: str) -> None:
        info = harness.wait(dispatch_job(pj.unencodable, {"workdir": workdir}).job_id)
        _failed_at_once(info, "StepError", "result of step 'odd'", "not JSON")
        assert count(workdir, "undecodable") == 1

    def test_step_exceptions_keep_class_and_json_attributes(
        self, harness: Harness, workdir: str
    ) -> None:
        info = harness.wait(dispatch_job(pj.step_exceptions, {"workdir": workdir}).job_id)
        assert info.status == JobStatus.SUCCEEDED, info.error
        assert info.result == {
            "portable": {
                "message": "quota exceeded",
                "code": 429,
                "detail": {"retry_after": 30},
                "lock": False,
            },
            "library": {"message": "not a cron expression", "class": "CroniterBadCronError"},
        }

    def test_a_cancelled_job_never_succeeds_and_starts_no_step(
        self, harness: Harness, workdir: str
    ) -> None:
        d = dispatch_job(pj.stubborn, {"workdir": workdir, "kind": "stubborn"})
        harness.wait(d.job_id, lambda i: count(workdir, "waiting-stubborn") == 1)
        assert cancel_job(d.job_id) is True
        info = harness.wait(d.job_id)
        assert info.status == JobStatus.CANCELLED, info
        assert info.result is None
        assert count(workdir, "stubborn-after-stubborn") == 0, "a step started after the cancel"
        # The interrupted step does not go on either: once the gate opens and another job
        # has run through the queue's one slot, its tail has still not run.
        open_gate(workdir, "stubborn")
        later = harness.wait(dispatch_job(pj.argument_types, {"workdir": "-"}).job_id)
        assert later.status == JobStatus.SUCCEEDED
        assert count(workdir, "after-gate-stubborn") == 0, "the step ran on after the cancel"
        assert cancel_job(d.job_id) is False

    # -- code outside steps: what Temporal refuses fails on every strict engine ----------

    WORKFLOW_RULE_ERRORS = ("StrictModeError", "RestrictedWorkflowAccessError")

    def test_a_call_temporal_refuses_outside_a_step_fails_the_job(
        self, harness: Harness, workdir: str
    ) -> None:
        _requires_strict(harness)
        info = harness.wait(dispatch_job(pj.refused_call, {"workdir": workdir}).job_id)
        assert info.status == JobStatus.FAILED, info
        assert info.error is not None and info.error.type in self.WORKFLOW_RULE_ERRORS
        assert count(workdir, "after-refused-call") == 0

    def test_blocking_the_loop_outside_a_step_fails_the_job(
        self, harness: Harness, workdir: str
    ) -> None:
        _requires_strict(harness)
        info = harness.wait(dispatch_job(pj.blocks, {"workdir": workdir}).job_id)
        assert info.status == JobStatus.FAILED, info
        assert info.error is not None
        assert info.error.type in ("StrictModeError", "WorkflowBlockedError"), info.error
        assert count(workdir, "after-block") == 0
