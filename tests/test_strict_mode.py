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
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from jobkit import JobkitSettings
from jobkit_dispatch import dispatch_job
from jobkit_dispatch.testing import InlineEngine, inline_engine, wait_for_job
from jobkit_engine import (
    DictStepMemo,
    JobContext,
    JobInfo,
    MemoSteps,
    StrictMode,
    StrictModeError,
    SystemClock,
    execute_job,
)
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


def _iterations_for(seconds: float, work: Callable[[int], int] = strict_jobs.spin) -> int:
    """How many iterations of `work` take about `seconds` on this machine, now (the best of
    three runs: a busy machine makes the job's run longer, not the count smaller)."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        work(100_000)
        best = min(best, time.perf_counter() - start)
    return int(100_000 * seconds / max(best, 1e-4))


def test_cpu_work_outside_a_step_that_holds_the_loop_fails_the_job() -> None:
    payload = {"seconds": _iterations_for(0.6)}  # 3x the threshold
    info = run("strict.cpu", payload)
    assert_strict_failure(
        info, "outside a step without waiting for a step or a timer",
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


def test_the_block_watchdog_measures_the_code_not_the_call_check() -> None:
    # The call check's profile hook slows code that makes calls several times over; a
    # block is judged by how long the code takes without it, as on Temporal.
    strict = StrictMode(block_threshold=0.4)
    quick = run(
        "strict.churn", {"seconds": _iterations_for(0.05, strict_jobs.churn)}, strict=strict
    )
    assert quick.status == "succeeded", quick.error
    slow = run("strict.churn", {"seconds": _iterations_for(1.2, strict_jobs.churn)}, strict=strict)
    assert_strict_failure(slow, "between step 'before' and step 'after'", "over the 0.4 s limit")


def test_awaits_that_stay_on_the_event_loop_do_not_end_a_block() -> None:
    # Temporal's deadlock detector times a whole workflow task, which ends only when the
    # handler waits for a step or a timer: `await asyncio.sleep(0)` does not end it.
    strict = StrictMode(block_threshold=0.3, replay=False)
    plan = {"iterations": _iterations_for(0.03), "chunks": 20}  # 0.6 s in all
    info = run("strict.chunks", {**plan, "between": "sleep0"}, strict=strict)
    assert_strict_failure(
        info, "between the handler's start and an await",
        "the awaits in between did not wait for a step or a timer", "over the 0.3 s limit",
    )  # fmt: skip
    for between in ("step", "timer"):
        info = run("strict.chunks", {**plan, "between": between}, strict=strict)
        assert info.status == "succeeded", (between, info.error)


CONCURRENT = [
    ("strict.gather-open", "called open() outside a step"),
    ("strict.gather-environ", "called os.environ.get() outside a step"),
    ("strict.task-open", "called open() outside a step"),
    ("strict.taskgroup-environ", "called os.environ.get() outside a step"),
]


@pytest.mark.parametrize(("name", "call"), CONCURRENT, ids=[name for name, _ in CONCURRENT])
def test_a_refused_call_in_a_task_the_handler_runs_fails_the_job(name: str, call: str) -> None:
    message = assert_strict_failure(run(name), call, MOVE)
    assert "tests/strict_jobs.py:" in message and "_in_a_branch" in message
    assert run(name, strict=False).status == "succeeded"


def test_cpu_work_in_a_task_the_handler_runs_is_a_block() -> None:
    info = run("strict.gather-cpu", {"seconds": _iterations_for(0.6)})
    assert_strict_failure(info, "outside a step", "over the 0.2 s limit")


def test_branches_that_keep_the_rules_pass() -> None:
    info = run("strict.gather-steps")
    assert info.status == "succeeded", info.error
    assert info.result == [2, 4, 6]
    assert strict_jobs.step_runs[info.job_id] == 3


def test_tasks_of_other_code_on_the_loop_are_not_watched() -> None:
    seen: dict[str, Any] = {}

    async def elsewhere(loop: asyncio.AbstractEventLoop, own: Any) -> bool:
        # Another job's code on the loop, not under strict mode, starts a task that reads
        # the environment while the strict job runs.
        for _ in range(5000):
            if loop.get_task_factory() is not own:
                break
            await asyncio.sleep(0.001)
        seen["during"] = loop.get_task_factory() is not own
        return await asyncio.create_task(strict_jobs.reads_the_environment_in_a_branch(0))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        made: list[Any] = []

        def own(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
            made.append(coro)
            return asyncio.Task(coro, loop=loop, **kwargs)

        loop.set_task_factory(own)
        other = asyncio.create_task(elsewhere(loop, own))
        seen["outcome"] = await execute_job("strict.parallel", None, 1, _context, strict=FAST)
        seen["other"] = await other
        seen["restored"] = loop.get_task_factory() is own
        seen["made"] = len(made)

    asyncio.run(main())
    assert type(seen["outcome"]).__name__ == "Succeeded", seen["outcome"]
    assert seen["during"] and seen["other"] is True
    assert seen["restored"]  # the loop's own factory is back: it made the job's tasks too
    assert seen["made"] == 6 + 6 + 2  # steps gathered, again in the replay; the other 2


def _context(definition: Any) -> JobContext:
    steps = MemoSteps(DictStepMemo(), SystemClock(), timedelta(seconds=5))
    return JobContext(
        job_id="j-1", job_name=definition.name, attempt=1, engine="test", step=steps,
        progress_sink=lambda progress: None,
    )  # fmt: skip


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
        sys.modules["temporalio"] = None  # as if jobkit-dispatch[temporal] were not installed
        from jobkit_dispatch import dispatch_job
        from jobkit_dispatch.testing import inline_engine, wait_for_job
        from jobkit_engine import StrictMode
        import tests.strict_jobs
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            StrictMode()
            StrictMode()
        assert len(caught) == 1, caught
        assert "pip install 'jobkit-dispatch[temporal]'" in str(caught[0].message)
        with inline_engine(strict=StrictMode(block_threshold=0.2)):
            def run(name, payload=None):
                return wait_for_job(dispatch_job(name, payload or {}).job_id)
            assert run("strict.open").status == "succeeded"  # no call check
            assert "not deterministic" in run("strict.counter").error.message
            assert "without waiting" in run("strict.sleep", {"seconds": 0.3}).error.message
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


def test_a_violation_in_a_task_ends_a_handler_that_waits_for_that_task() -> None:
    started = time.monotonic()
    info = run("strict.waits-for-a-broken-task")
    assert info.status == "failed" and info.error is not None, info
    assert info.error.type == "StrictModeError" and "open()" in info.error.message
    assert info.attempts == 1
    assert time.monotonic() - started < 8  # not the attempt's timeout (the queue's: minutes)


def test_a_task_factory_reads_the_job_coroutine_through_the_wrapper() -> None:
    from jobkit_engine.strict._tasks import Driven
    from jobkit_engine.strict._watch import Watch

    async def branch() -> int:
        return 1

    coro = branch()
    driven = Driven(coro, Watch("j", branch, None, 2.0), handler=False)
    assert driven.__qualname__ == coro.__qualname__
    assert driven.cr_running is False
    coro.close()
