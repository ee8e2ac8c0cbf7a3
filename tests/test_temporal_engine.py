"""What the Temporal engine adds to the conformance suite: a worker killed or stopped in
the middle of a step, replay from history, days-long sleeps under the time-skipping
server, cancellation of a running activity and of a timer, steps and their exceptions
across the activity boundary, the workflow sandbox, Temporal down, and the slot pool that
gives queues their concurrency.

The killed and stopped workers run in subprocesses that import this module for its jobs.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import BaseModel

from jobkit.errors import DispatchError, EngineUnavailableError
from jobkit.queues import QueueSpec, default_queues
from jobkit.settings import JobkitSettings
from jobkit_dispatch import Dispatcher, cancel_job, dispatch_job
from jobkit_dispatch.conformance._files import count, open_gate, tally, wait_for_gate
from jobkit_dispatch.engines import load_engine
from jobkit_dispatch.testing import use_engine, wait_for_job
from jobkit_dispatch.testing.redis_server import free_port
from jobkit_dispatch.testing.temporal_server import TemporalDevServer, TimeSkippingServer
from jobkit_engine import (
    JobContext,
    JobError,
    JobStatus,
    NonRetryableError,
    Progress,
    Retry,
    job,
)
from tests.waiting import eventually

pytest.importorskip("temporalio")

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from jobkit_dispatch.engines.temporal import TemporalEngine
from jobkit_dispatch.engines.temporal._model import ErrorState, JobState, ProgressState
from jobkit_dispatch.engines.temporal._slots import SlotPool

QUEUE = "temporal-test"  # served by this module's in-process worker
REPLAY_QUEUE = "temporal-replay"  # served by a worker that keeps no workflow cached
REMOTE_QUEUE = "temporal-remote"  # served only by the subprocess workers
PREFIX = "engine-test-"
default_queues.register(QueueSpec(QUEUE, concurrency=2, default_timeout=timedelta(seconds=30)))
default_queues.register(QueueSpec(REPLAY_QUEUE, concurrency=1))
default_queues.register(
    QueueSpec(REMOTE_QUEUE, concurrency=1, default_timeout=timedelta(seconds=60))
)


# -- jobs ----------------------------------------------------------------------------------


class Work(BaseModel):
    workdir: str
    days: float = 0.0


def note(workdir: str, name: str) -> str:
    tally(workdir, name)
    return name


def blocking_note(workdir: str, name: str) -> str:
    """A sync step that holds its worker until the test opens the gate `name`."""
    tally(workdir, f"{name}-started")
    deadline = time.monotonic() + 60
    while not Path(workdir, f"{name}.gate").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    tally(workdir, name)
    return name


async def cancellable_note(workdir: str, name: str) -> str:
    tally(workdir, f"{name}-started")
    try:
        await wait_for_gate(workdir, name)
    except asyncio.CancelledError:
        tally(workdir, f"{name}-cancelled")
        raise
    tally(workdir, name)
    return name


class Refused(NonRetryableError):
    """A step's own non-retryable error."""


def connect(workdir: str) -> None:
    tally(workdir, "connect")
    raise ConnectionError("connection refused by the test")


def refuse(workdir: str) -> None:
    tally(workdir, "refuse")
    raise Refused("this input can never work")


@job("temporal-test.three-steps", queue=REMOTE_QUEUE, retry=1)
async def three_steps(ctx: JobContext, payload: Work) -> list[str]:
    return [
        await ctx.step.run("first", note, payload.workdir, "first"),
        await ctx.step.run("blocking", blocking_note, payload.workdir, "blocking"),
        await ctx.step.run("last", note, payload.workdir, "last"),
    ]


@job("temporal-test.nap", queue=QUEUE, retry=1)
async def nap(ctx: JobContext, payload: Work) -> list[str]:
    before = await ctx.step.run("before", note, payload.workdir, "before")
    await ctx.step.sleep("nap", timedelta(days=payload.days))
    after = await ctx.step.run("after", note, payload.workdir, "after")
    return [before, after]


@job("temporal-test.cancellable", queue=QUEUE, retry=1)
async def cancellable(ctx: JobContext, payload: Work) -> list[str]:
    held = await ctx.step.run("held", cancellable_note, payload.workdir, "held")
    after = await ctx.step.run("after", note, payload.workdir, "after")
    return [held, after]


@job("temporal-test.step-errors", queue=QUEUE, retry=Retry(attempts=3, initial_delay=0.0))
async def step_errors(ctx: JobContext, payload: Work) -> None:
    try:
        await ctx.step.run("connect", connect, payload.workdir)
    except ConnectionError:  # the step's own exception class reaches the handler
        await ctx.step.run("caught", tally, payload.workdir, "caught")
    await ctx.step.run("refuse", refuse, payload.workdir)


def fails_first(workdir: str, attempt: int) -> int:
    tally(workdir, "second")
    if attempt == 1:
        raise ConnectionError("the first attempt fails")
    return attempt


@job("temporal-test.replayed", queue=REPLAY_QUEUE, retry=Retry(attempts=2, initial_delay=0.1))
async def replayed(ctx: JobContext, payload: Work) -> dict[str, object]:
    first = await ctx.step.run("first", note, payload.workdir, "first")
    ctx.report_progress(0.25, "first done")
    await ctx.step.sleep("short", 0.05)  # under the threshold: keeps the slot
    await ctx.step.sleep("long", 0.6)  # over it: gives the slot back and takes it again
    second = await ctx.step.run("second", fails_first, payload.workdir, ctx.attempt)
    return {"first": first, "second": second}


@job("temporal-test.lambda-step", queue=QUEUE, retry=3)
async def lambda_step(ctx: JobContext) -> int:
    return await ctx.step.run("inline", lambda: 1)


@job("temporal-test.reads-stdin", queue=QUEUE, retry=Retry(attempts=2, initial_delay=0.0))
async def reads_stdin(ctx: JobContext) -> str:
    return input()  # noqa: ASYNC250 - outside a step, which the workflow sandbox refuses


# -- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(jobkit_temporal_server: TemporalDevServer) -> Iterator[TemporalEngine]:
    engine = TemporalEngine(
        jobkit_temporal_server.address,
        task_queue_prefix=PREFIX,
        sleep_threshold=0.5,
        step_heartbeat_timeout=1.0,
    )
    with engine.start_worker([QUEUE]), use_engine(engine):
        yield engine
    engine.close()


def history_event_types(address: str, job_id: str) -> list[str]:
    async def fetch() -> list[str]:
        client = await Client.connect(address)
        handle = client.get_workflow_handle(job_id)
        return [EventType.Name(event.event_type) async for event in handle.fetch_history_events()]

    return asyncio.run(fetch())


# -- steps across the activity boundary ----------------------------------------------------


def test_step_exceptions_keep_their_class(engine: TemporalEngine, workdir: str) -> None:
    info = wait_for_job(dispatch_job(step_errors, {"workdir": workdir}).job_id, timeout=20)
    assert info.status == JobStatus.FAILED
    assert info.error is not None
    assert (info.error.type, info.error.message) == ("Refused", "this input can never work")
    assert info.error.traceback and 'raise Refused("this input can never work")' in (
        info.error.traceback
    )
    assert info.attempts == 1
    assert [count(workdir, n) for n in ("connect", "caught", "refuse")] == [1, 1, 1]


def test_a_step_temporal_cannot_run_fails_the_job_naming_it(engine: TemporalEngine) -> None:
    info = wait_for_job(dispatch_job(lambda_step).job_id, timeout=20)
    assert info.status == JobStatus.FAILED
    assert info.error is not None and info.error.type == "StepError"
    assert "'inline'" in info.error.message and "lambda" in info.error.message
    assert info.attempts == 1


def test_code_the_sandbox_refuses_fails_the_job(engine: TemporalEngine) -> None:
    info = wait_for_job(dispatch_job(reads_stdin).job_id, timeout=20)
    assert info.status == JobStatus.FAILED
    assert info.error is not None and info.error.type == "RestrictedWorkflowAccessError"
    assert info.attempts == 2


def test_the_workflow_replays_deterministically(engine: TemporalEngine, workdir: str) -> None:
    """A worker that caches no workflow replays each job's whole history at every task:
    steps, progress, both kinds of sleep, slots and a retry must all replay the same."""
    with engine.start_worker([REPLAY_QUEUE], max_cached_workflows=0):
        info = wait_for_job(dispatch_job(replayed, {"workdir": workdir}).job_id, timeout=30)
    assert info.status == JobStatus.SUCCEEDED, info
    assert info.result == {"first": "first", "second": 2}
    assert (info.attempts, info.progress) == (2, Progress(0.25, "first done"))
    assert (count(workdir, "first"), count(workdir, "second")) == (1, 2)


# -- cancellation --------------------------------------------------------------------------


def test_cancel_while_a_step_runs_cancels_its_activity(
    engine: TemporalEngine, jobkit_temporal_server: TemporalDevServer, workdir: str
) -> None:
    d = dispatch_job(cancellable, {"workdir": workdir})
    eventually(lambda: count(workdir, "held-started") == 1)
    assert cancel_job(d.job_id) is True
    assert wait_for_job(d.job_id, timeout=20).status == JobStatus.CANCELLED
    eventually(lambda: count(workdir, "held-cancelled") == 1)  # via the step's heartbeat
    open_gate(workdir, "held")
    assert (count(workdir, "held"), count(workdir, "after")) == (0, 0)
    events = history_event_types(jobkit_temporal_server.address, d.job_id)
    assert "EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED" in events
    assert events[-1] == "EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED"


def test_cancel_while_sleeping_cancels_the_timer(
    engine: TemporalEngine, jobkit_temporal_server: TemporalDevServer, workdir: str
) -> None:
    d = dispatch_job(nap, {"workdir": workdir, "days": 1})
    info = wait_for_job(d.job_id, lambda i: i.status == JobStatus.SLEEPING, timeout=20)
    assert info.scheduled_for and info.started_at
    assert info.scheduled_for - info.started_at >= timedelta(days=1)
    assert cancel_job(d.job_id) is True
    assert wait_for_job(d.job_id, timeout=20).status == JobStatus.CANCELLED
    events = history_event_types(jobkit_temporal_server.address, d.job_id)
    assert "EVENT_TYPE_TIMER_CANCELED" in events
    assert (count(workdir, "before"), count(workdir, "after")) == (1, 0)


def test_a_job_cancelled_at_any_point_ends_cancelled(engine: TemporalEngine, workdir: str) -> None:
    """Cancel right after dispatch, again and again: the request lands before the first
    workflow task, while the job asks for a slot, runs its first step, or sleeps."""
    dispatched = [dispatch_job(nap, {"workdir": workdir, "days": 1}) for _ in range(15)]
    for d in dispatched:
        assert cancel_job(d.job_id) is True
    for d in dispatched:
        info = wait_for_job(d.job_id, timeout=20)
        assert info.status == JobStatus.CANCELLED, info
    assert count(workdir, "after") == 0


# -- time skipping -------------------------------------------------------------------------


def test_a_sleep_of_days_completes_under_the_time_skipping_server(
    jobkit_temporal_time_skipping_server: TimeSkippingServer, workdir: str
) -> None:
    server = jobkit_temporal_time_skipping_server
    engine = TemporalEngine(server.address, task_queue_prefix=PREFIX)
    started = time.monotonic()
    with engine.start_worker([QUEUE]), use_engine(engine):
        d = dispatch_job(nap, {"workdir": workdir, "days": 3})
        info = wait_for_job(d.job_id, lambda i: i.status == JobStatus.SLEEPING, timeout=20)
        assert info.scheduled_for and info.started_at
        assert info.scheduled_for - info.started_at >= timedelta(days=3)
        server.unlock_time_skipping()
        try:
            info = wait_for_job(d.job_id, timeout=20)
        finally:
            server.lock_time_skipping()
    engine.close()
    # Three days asleep, far past the queue's 30 s timeout: sleeping is not running.
    assert (info.status, info.result, info.attempts) == (
        JobStatus.SUCCEEDED,
        ["before", "after"],
        1,
    )
    assert info.finished_at and info.created_at
    assert info.finished_at - info.created_at >= timedelta(days=3)
    assert time.monotonic() - started < 20
    assert (count(workdir, "before"), count(workdir, "after")) == (1, 1)


# -- workers that die or stop mid-step -----------------------------------------------------


def _worker_process(address: str, log: Path) -> subprocess.Popen[bytes]:
    """`run_worker` for REMOTE_QUEUE in a subprocess that imports this module's jobs."""
    code = (
        "import logging\n"
        "from datetime import timedelta\n"
        "from jobkit.settings import JobkitSettings\n"
        "from jobkit_dispatch.engines.temporal.worker import run_worker\n"
        f"settings = JobkitSettings(temporal_address={address!r}, "
        f"temporal_task_queue_prefix={PREFIX!r})\n"
        # A killed worker's cached workflows move to another worker after this long.
        "logging.basicConfig(level=logging.INFO)\n"
        f"run_worker([{REMOTE_QUEUE!r}], [{__name__!r}], settings,\n"
        "           sticky_queue_schedule_to_start_timeout=timedelta(seconds=1))\n"
    )
    root = str(Path(__file__).resolve().parents[__name__.count(".")])  # where __name__ imports
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONPATH": path},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_a_worker_killed_mid_step_loses_nothing(
    engine: TemporalEngine,
    jobkit_temporal_server: TemporalDevServer,
    workers: list[subprocess.Popen[bytes]],
    workdir: str,
) -> None:
    log = Path(workdir, "workers.log")
    workers.append(_worker_process(jobkit_temporal_server.address, log))
    d = dispatch_job(three_steps, {"workdir": workdir})
    eventually(lambda: count(workdir, "blocking-started") == 1, timeout=30)
    workers[0].send_signal(signal.SIGKILL)
    workers[0].wait()
    open_gate(workdir, "blocking")
    workers.append(_worker_process(jobkit_temporal_server.address, log))
    info = wait_for_job(d.job_id, timeout=40)
    assert info.status == JobStatus.SUCCEEDED, (info, log.read_text())
    assert info.result == ["first", "blocking", "last"]
    assert info.attempts == 1  # a lost worker is not a failed attempt
    # The step that was cut off ran again; the one that had completed did not.
    assert [count(workdir, n) for n in ("first", "blocking-started", "blocking", "last")] == [
        1,
        2,
        1,
        1,
    ]


@pytest.mark.slow
def test_sigterm_lets_the_running_step_finish(
    engine: TemporalEngine,
    jobkit_temporal_server: TemporalDevServer,
    workers: list[subprocess.Popen[bytes]],
    workdir: str,
) -> None:
    log = Path(workdir, "workers.log")
    workers.append(_worker_process(jobkit_temporal_server.address, log))
    d = dispatch_job(three_steps, {"workdir": workdir})
    eventually(lambda: count(workdir, "blocking-started") == 1, timeout=30)
    workers[0].send_signal(signal.SIGTERM)
    # The step must end during the shutdown, so the gate opens once the worker stops.
    eventually(lambda: "SIGTERM: finishing running steps" in log.read_text())
    open_gate(workdir, "blocking")
    assert workers[0].wait(timeout=30) == 0, log.read_text()
    assert count(workdir, "blocking") == 1  # finished by the stopping worker
    workers.append(_worker_process(jobkit_temporal_server.address, log))
    info = wait_for_job(d.job_id, timeout=40)
    assert info.status == JobStatus.SUCCEEDED, (info, log.read_text())
    assert [count(workdir, n) for n in ("first", "blocking-started", "blocking", "last")] == [
        1,
        1,
        1,
        1,
    ]


# -- Temporal down -------------------------------------------------------------------------


def test_nothing_listening_fails_fast(workdir: str) -> None:
    address = f"127.0.0.1:{free_port()}"
    engine = TemporalEngine(address)
    dispatcher = Dispatcher(engine)
    started = time.monotonic()
    with pytest.raises(DispatchError, match="temporal: cannot connect to Temporal"):
        dispatcher.dispatch(nap, {"workdir": workdir})
    with pytest.raises(EngineUnavailableError):
        engine.get("any-job")
    assert time.monotonic() - started < 2
    engine.close()


def test_a_server_that_never_answers_costs_the_connect_timeout(workdir: str) -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does) and says nothing
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        engine = TemporalEngine(f"127.0.0.1:{silent.getsockname()[1]}", connect_timeout=0.5)
        request = Dispatcher(engine).prepare(nap, {"workdir": workdir})
        started = time.monotonic()
        with pytest.raises(EngineUnavailableError):
            engine.enqueue(request)
        assert time.monotonic() - started < 1.5
        engine.close()


def test_a_server_that_dies_fails_fast(workdir: str) -> None:
    with TemporalDevServer() as server:
        engine = TemporalEngine(server.address, task_queue_prefix=PREFIX)
        d = Dispatcher(engine).dispatch(nap, {"workdir": workdir})
        assert engine.get(d.job_id) is not None
        request = Dispatcher(engine).prepare(nap, {"workdir": workdir})
        server.stop(kill=True)
        started = time.monotonic()
        with pytest.raises(EngineUnavailableError):
            engine.enqueue(request)
        assert time.monotonic() - started < 3
        engine.close()


# -- packaging -----------------------------------------------------------------------------


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_a_missing_temporalio_names_the_extra() -> None:
    result = _python(
        "import sys\n"
        "sys.modules['temporalio'] = None  # as if it were not installed\n"
        "from jobkit.settings import JobkitSettings\n"
        "from jobkit_dispatch.engines import load_engine\n"
        "load_engine('temporal', JobkitSettings())\n"
    )
    assert result.returncode != 0
    assert "EngineNotInstalledError" in result.stderr
    assert "pip install 'jobkit-dispatch[temporal]'" in result.stderr
    assert isinstance(load_engine("temporal", JobkitSettings()), TemporalEngine)


def test_the_memo_stays_small_whatever_a_job_reports() -> None:
    error = JobError("ValueError", "x" * 100_000, "t" * 100_000)
    state = JobState(job_name="j", queue="q", status=JobStatus.FAILED, error=ErrorState.of(error))
    state.progress = ProgressState.of(Progress(0.5, "m" * 100_000))
    assert len(json.dumps(state.memo())) < 10_000  # Temporal refuses a memo past 32 KB
    assert state.error is not None and state.error.traceback
    assert state.error.traceback.endswith("t")  # the tail of a traceback is kept


# -- the slot pool -------------------------------------------------------------------------


def test_slots_go_to_waiters_first_come_first_served() -> None:
    woken: list[str] = []
    pool = SlotPool(1)
    pool._wake = woken.extend  # type: ignore[method-assign]
    assert pool.try_acquire("a", "a/1", lease=60)
    assert not pool.try_acquire("b", "b/1", lease=60)
    assert not pool.try_acquire("c", "c/1", lease=60)
    pool.release("a/1")
    assert woken == ["b"]
    assert not pool.try_acquire("d", "d/1", lease=60)  # the slot is kept for b
    assert not pool.try_acquire("c", "c/1", lease=60)
    assert pool.try_acquire("b", "b/1", lease=60)
    assert pool.try_acquire("b", "b/1", lease=60)  # asking again (a retried activity) is fine
    pool.release("b/1")
    pool.release("b/1")  # releasing twice (a replay) frees one slot only
    assert woken == ["b", "c"]
    assert pool.running == 0


def test_a_cancelled_waiter_passes_its_slot_on() -> None:
    woken: list[str] = []
    pool = SlotPool(1)
    pool._wake = woken.extend  # type: ignore[method-assign]
    assert pool.try_acquire("a", "a/1", lease=60)
    assert not pool.try_acquire("b", "b/1", lease=60)
    assert not pool.try_acquire("c", "c/1", lease=60)
    pool.release("a/1")
    pool.forget("b")
    assert woken == ["b", "c"]
    assert pool.try_acquire("c", "c/1", lease=60)


def test_an_expired_lease_frees_its_slot() -> None:
    pool = SlotPool(1)
    assert pool.try_acquire("a", "a/1", lease=0.01)
    eventually(lambda: pool.try_acquire("b", "b/1", lease=60), timeout=2)
