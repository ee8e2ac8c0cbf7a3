"""Strict mode, on the inline engine with no server: each job that would break only on
Temporal fails at once with an error naming the job, the call or the steps, and the fix;
the same job passes with strict mode off; jobs that keep the rules pass."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from jobkit import JobkitSettings
from jobkit_dispatch import dispatch_job
from jobkit_dispatch.conformance import EngineConformance, Harness
from jobkit_dispatch.testing import InlineEngine, ManualClock, inline_engine, wait_for_job
from jobkit_engine import JobInfo, StrictMode, StrictModeError
from tests import strict_jobs

FAST = StrictMode(block_threshold=0.2)
MOVE = "Move this into ctx.step.run(...)"


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def http_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()


def run(name: str, payload: Any = None, *, strict: bool | StrictMode = FAST) -> JobInfo:
    with inline_engine(strict=strict):
        return wait_for_job(dispatch_job(name, payload or {}).job_id)


def assert_strict_failure(info: JobInfo, *needles: str) -> str:
    assert info.status == "failed", info
    assert info.error is not None
    assert info.error.type == "StrictModeError", info.error.message
    assert info.attempts == 1  # never retried: waiting cannot fix the code
    message = info.error.message
    assert f"job {info.job_name!r}" in message
    for needle in needles:
        assert needle in message, message
    return message


CALLS = [
    ("strict.open", "open()"),
    ("strict.now", "datetime.datetime.now()"),
    ("strict.time", "time.time()"),
    ("strict.random", "random.random()"),
    ("strict.uuid", "uuid.uuid4()"),
    ("strict.environ", "os.environ.get()"),
    ("strict.getenv", "os.getenv()"),
]


@pytest.mark.parametrize(("name", "call"), CALLS, ids=[name for name, _ in CALLS])
def test_a_call_the_sandbox_refuses_fails_the_job(name: str, call: str) -> None:
    message = assert_strict_failure(run(name), f"called {call} outside a step", MOVE)
    assert "tests/strict_jobs.py:" in message  # the line of the handler that did it
    assert "workflow sandbox refuses it" in message
    assert run(name, strict=False).status == "succeeded"


@pytest.mark.parametrize(
    ("name", "through"),
    [("strict.httpx", "through httpx._api.get"), ("strict.urllib", "urllib.request.urlopen")],
)
def test_an_http_request_fails_the_job_through_what_it_calls(
    name: str, through: str, http_url: str
) -> None:
    assert_strict_failure(run(name, {"url": http_url}), through, "outside a step", MOVE)
    assert run(name, {"url": http_url}, strict=False).status == "succeeded"


@pytest.mark.parametrize(
    ("name", "through"),
    [
        ("strict.to-thread", "through asyncio.threads.to_thread"),
        ("strict.executor", "called loop.run_in_executor()"),
        ("strict.thread", "called threading.Thread() outside a step"),
    ],
)
def test_threads_and_executors_fail_the_job(name: str, through: str) -> None:
    info = run(name)
    assert_strict_failure(info, through, "ctx.step.run(...)")
    assert strict_jobs.step_runs[info.job_id] == 0  # refused before it ran
    assert run(name, strict=False).status == "succeeded"


def test_a_refused_call_fails_the_job_even_when_the_handler_catches_it() -> None:
    info = run("strict.swallowed")
    assert_strict_failure(info, "called open()")
    assert strict_jobs.step_runs[info.job_id] == 0  # and no step ran after it


@pytest.mark.parametrize(
    ("name", "steps"),
    [("strict.now", 1), ("strict.uuid", 1), ("strict.counter", 1), ("strict.branch", 2)],
)
def test_steps_that_differ_on_replay_fail_the_job(name: str, steps: int) -> None:
    # The call check is off: the replay alone finds ids and branches that change.
    info = run(name, strict=StrictMode(calls=False))
    assert_strict_failure(
        info, "is not deterministic", "replayed against its recorded step results",
        "Derive step ids and branches from the payload or from a step's result",
    )  # fmt: skip
    assert strict_jobs.step_runs[info.job_id] == steps  # the replay ran none
    assert run(name, strict=False).status == "succeeded"


def test_the_determinism_error_names_the_steps() -> None:
    message = assert_strict_failure(run("strict.branch", strict=StrictMode(calls=False)))
    assert "the replay ended without calling 'only-once' (run)" in message
    assert "(the execution called: 'first' (run), 'only-once' (run))" in message


def _iterations_for(seconds: float) -> int:
    """How many `spin` iterations take about `seconds` on this machine, now."""
    start = time.perf_counter()
    strict_jobs.spin(200_000)
    elapsed = max(time.perf_counter() - start, 1e-4)
    return int(200_000 * seconds / elapsed)


def test_cpu_work_outside_a_step_that_holds_the_loop_fails_the_job() -> None:
    payload = {"seconds": _iterations_for(0.6)}  # 3x the threshold
    info = run("strict.cpu", payload)
    assert_strict_failure(
        info, "outside a step without yielding to the event loop",
        "between step 'before' and step 'after'", "over the 0.2 s limit",
        "Move the blocking or CPU-bound work into ctx.step.run(...)",
    )  # fmt: skip
    assert strict_jobs.step_runs[info.job_id] == 1  # 'after' never started
    assert run("strict.cpu", payload, strict=False).status == "succeeded"


def test_cpu_work_inside_a_step_is_not_a_block() -> None:
    info = run("strict.cpu-in-step", {"seconds": _iterations_for(0.6)})
    assert info.status == "succeeded", info.error


def test_a_blocking_sleep_outside_a_step_fails_the_job() -> None:
    with_calls = run("strict.sleep", {"seconds": 0.3})
    assert_strict_failure(with_calls, "called time.sleep()")
    watchdog_only = run(
        "strict.sleep", {"seconds": 0.3}, strict=StrictMode(calls=False, block_threshold=0.2)
    )
    assert_strict_failure(
        watchdog_only, "ran 0.", "between the handler's start and the handler's end"
    )
    assert run("strict.sleep", {"seconds": 0.3}, strict=False).status == "succeeded"


def test_jobs_that_keep_the_rules_pass(http_url: str) -> None:
    info = run("strict.good", {"url": http_url, "seconds": 0.5})  # a step longer than the limit
    assert info.status == "succeeded", info.error
    assert info.result["status"] == [200, 200]
    assert info.progress is not None and info.progress.message == "halfway"
    for name in ("strict.recovers", "strict.parallel"):
        info = run(name)
        assert info.status == "succeeded", info.error


def test_the_default_strict_mode_lets_a_long_async_step_run(http_url: str) -> None:
    info = run("strict.good", {"url": http_url, "seconds": 0.3}, strict=True)
    assert info.status == "succeeded", info.error


def test_jobs_on_one_loop_are_told_apart(http_url: str) -> None:
    # A job inside its steps (free to do I/O) while others run handler code, on one loop.
    with inline_engine(strict=FAST, concurrency={"default": 8}):
        good = [dispatch_job("strict.good", {"url": http_url, "seconds": 0.2}) for _ in range(3)]
        bad = dispatch_job("strict.now", {})
        parallel = dispatch_job("strict.parallel", {})
        assert wait_for_job(bad.job_id).error.type == "StrictModeError"
        for d in [*good, parallel]:
            info = wait_for_job(d.job_id)
            assert info.status == "succeeded", info.error


def test_the_helpers_are_strict_by_default_and_can_be_turned_off() -> None:
    with inline_engine() as engine:
        assert isinstance(engine.strict, StrictMode)
        assert engine.strict.block_threshold == 2.0
    with inline_engine(strict=False) as engine:
        assert engine.strict is None
    assert InlineEngine().strict is None  # plain InlineEngine use: off


def test_the_fixture_is_strict(jobkit_inline: InlineEngine) -> None:
    assert jobkit_inline.strict is not None
    assert wait_for_job(dispatch_job("strict.open", {}).job_id).error.type == "StrictModeError"


class TestFixtureOverride:
    @pytest.fixture
    def jobkit_strict(self) -> bool:
        return False

    def test_overriding_jobkit_strict_turns_it_off(self, jobkit_inline: InlineEngine) -> None:
        assert jobkit_inline.strict is None
        assert wait_for_job(dispatch_job("strict.open", {}).job_id).status == "succeeded"


def test_workers_turn_it_on_with_a_setting() -> None:
    assert StrictMode.from_settings(JobkitSettings()) is None
    assert isinstance(StrictMode.from_settings(JobkitSettings(strict=True)), StrictMode)


def test_the_error_is_non_retryable_and_exported() -> None:
    import jobkit_engine
    from jobkit_engine import NonRetryableError

    assert issubclass(StrictModeError, NonRetryableError)
    assert {"StrictMode", "StrictModeError"} <= set(jobkit_engine.__all__)
    error = StrictModeError("a.job", "called x()", "Move this.")
    assert str(error) == "strict mode: job 'a.job' called x(). Move this."


def test_the_loop_refusals_are_what_temporals_workflow_loop_refuses() -> None:
    from temporalio.worker._workflow_instance import _WorkflowInstanceImpl

    from jobkit_engine.strict._sandbox import LOOP_REFUSES

    for name in LOOP_REFUSES:
        implemented = getattr(_WorkflowInstanceImpl, name)
        assert implemented is getattr(asyncio.AbstractEventLoop, name), name


def test_without_temporalio_it_warns_once_and_still_checks_determinism_and_blocking() -> None:
    script = textwrap.dedent(
        """
        import sys, warnings
        sys.modules["temporalio"] = None  # as if jobkit[temporal] were not installed
        from jobkit_dispatch import dispatch_job
        from jobkit_dispatch.testing import inline_engine, wait_for_job
        from jobkit_engine import StrictMode
        import tests.strict_jobs
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            StrictMode()
            StrictMode()
        assert len(caught) == 1, caught
        assert "pip install 'jobkit[temporal]'" in str(caught[0].message)
        with inline_engine(strict=StrictMode(block_threshold=0.2)):
            def run(name, payload=None):
                return wait_for_job(dispatch_job(name, payload or {}).job_id)
            assert run("strict.open").status == "succeeded"  # no call check
            assert "not deterministic" in run("strict.counter").error.message
            assert "without yielding" in run("strict.sleep", {"seconds": 0.3}).error.message
        assert "temporalio" not in {m for m in sys.modules if sys.modules[m] is not None}
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_a_retry_after_a_caught_step_failure_replays_cleanly(jobkit_inline: InlineEngine) -> None:
    info = wait_for_job(dispatch_job("strict.recovers", {}).job_id)
    assert info.status == "succeeded" and info.attempts == 2, info.error
    assert info.result == 7


class TestTheConformanceJobsPassInStrictMode(EngineConformance):
    """The conformance suite's jobs keep Temporal's rules: its whole run passes strict."""

    @pytest.fixture
    def harness(self) -> Iterator[Harness]:
        clock = ManualClock()
        harness = Harness(InlineEngine(clock=clock, strict=True), now=clock.now)
        yield harness
        harness.engine.close()
