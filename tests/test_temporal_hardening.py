"""Nothing hangs on Temporal: each way a job could stay queued, running or sleeping
forever ends in a final state that `get_job` shows, on a real dev server and worker.

- handler code that blocks its workflow thread past Temporal's 2 s deadlock threshold
  fails the job with a `WorkflowBlockedError` (and the worker keeps serving);
- a replay that diverges from the history fails the job with a `NondeterminismError`;
- a cancellation reaches a running async step within about a second;
- a job no worker has picked up is cancelled at once.

(The history limit has its own module, test_temporal_history.py.)

Assertions are on final states and on what steps wrote; time appears only as the deadline
of a poll, generous enough for a loaded machine.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from pydantic import BaseModel

from jobkit.queues import QueueSpec, default_queues
from jobkit_dispatch import cancel_job, dispatch_job, get_job
from jobkit_dispatch.conformance._files import count, open_gate, tally, wait_for_gate
from jobkit_dispatch.testing import use_engine, wait_for_job
from jobkit_dispatch.testing.temporal_server import TemporalDevServer
from jobkit_engine import JobContext, JobStatus, Retry, job
from tests.waiting import eventually

pytest.importorskip("temporalio")

from temporalio.client import Client

from jobkit_dispatch.engines.temporal import TemporalEngine
from jobkit_dispatch.engines.temporal._watchdog import ActivationWatchdog

PREFIX = "hardening-"
QUEUE = "temporal-hardening"  # served by the module's worker
BLOCK_QUEUE = "temporal-hardening-block"  # a worker per test, stopped inside the test
REPLAY_QUEUE = "temporal-hardening-replay"  # a worker that caches no workflow
IDLE_QUEUE = "temporal-hardening-idle"  # no worker, until the test starts one
for _name in (QUEUE, BLOCK_QUEUE, REPLAY_QUEUE, IDLE_QUEUE):
    default_queues.register(QueueSpec(_name, concurrency=2, default_timeout=timedelta(seconds=60)))

RELEASE = threading.Event()  # lets a handler blocked in `hangs` go


# -- jobs ----------------------------------------------------------------------------------


class Work(BaseModel):
    workdir: str
    how: str = ""


def note(workdir: str, name: str) -> str:
    tally(workdir, name)
    return name


async def waits_then_marks(workdir: str) -> str:
    """An async step that waits, cancellably, and writes a marker after the wait."""
    tally(workdir, "waiting")
    try:
        await wait_for_gate(workdir, "wait")
    except asyncio.CancelledError:
        tally(workdir, "wait-cancelled")
        raise
    tally(workdir, "marker")
    return "waited"


@job("hardening.blocks", queue=BLOCK_QUEUE, retry=1)
async def blocks(ctx: JobContext, payload: Work) -> str:
    await ctx.step.run("before", note, payload.workdir, "before")
    if payload.how == "sleeps":
        time.sleep(3)  # noqa: ASYNC251 - the mistake under test
    elif payload.how == "computes":
        end = time.monotonic() + 3
        while time.monotonic() < end:
            pass
    else:  # hangs until the test lets go (in C: temporalio cannot interrupt it)
        RELEASE.wait(60)
    return await ctx.step.run("after", note, payload.workdir, "after")


@job("hardening.quick", queue=BLOCK_QUEUE, retry=1)
async def quick(ctx: JobContext, payload: Work) -> str:
    return await ctx.step.run("only", note, payload.workdir, "quick")


@job("hardening.idle", queue=IDLE_QUEUE, retry=1)
async def idle(ctx: JobContext, payload: Work) -> str:
    return await ctx.step.run("only", note, payload.workdir, "idle")


@job("hardening.nondeterministic", queue=REPLAY_QUEUE, retry=Retry(attempts=2, initial_delay=0.0))
async def nondeterministic(ctx: JobContext, payload: Work) -> str:
    if ctx.attempt == 1:
        raise ConnectionError("the first attempt fails")  # leaves an error in the memo
    picked = f"pick-{uuid.uuid4().hex}"  # decided outside a step: differs on replay
    await ctx.step.run(picked, note, payload.workdir, "pick")
    return await ctx.step.run("after", note, payload.workdir, "after")


@job("hardening.waits", queue=QUEUE, retry=1)
async def waits(ctx: JobContext, payload: Work) -> str:
    return await ctx.step.run("wait", waits_then_marks, payload.workdir)


@job("hardening.lingers", queue=QUEUE, retry=1)
async def lingers(ctx: JobContext, payload: Work) -> str:
    try:
        return await ctx.step.run("wait", waits_then_marks, payload.workdir)
    except asyncio.CancelledError:  # the mistake under test: it swallows the cancel
        await ctx.step.sleep("linger", timedelta(days=1))
        return "lingered"


# -- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(jobkit_temporal_server: TemporalDevServer) -> Iterator[TemporalEngine]:
    # A long step heartbeat timeout (30 s), so that temporalio's default heartbeat throttle
    # (80% of it, 24 s) would miss the cancellation test's deadline: it must not wait for it.
    engine = TemporalEngine(
        jobkit_temporal_server.address, task_queue_prefix=PREFIX, step_heartbeat_timeout=30.0
    )
    with engine.start_worker([QUEUE]), use_engine(engine):
        yield engine
    engine.close()


def has_heartbeat(address: str, job_id: str) -> bool:
    """Whether the server has a heartbeat of the job's running step: from then on the
    worker throttles the step's heartbeats."""

    async def run() -> bool:
        client = await Client.connect(address)
        description = await client.get_workflow_handle(job_id).describe()
        pending = description.raw_description.pending_activities
        return bool(pending) and pending[0].HasField("last_heartbeat_time")

    return asyncio.run(run())


def terminate(address: str, job_id: str, reason: str) -> None:
    async def run() -> None:
        client = await Client.connect(address)
        await client.get_workflow_handle(job_id).terminate(reason=reason)

    asyncio.run(run())


# -- a handler that blocks its workflow thread ---------------------------------------------


@pytest.mark.parametrize("how", ["sleeps", "computes", "hangs"])
def test_a_handler_that_blocks_its_thread_fails_the_job(
    engine: TemporalEngine, workdir: str, how: str
) -> None:
    RELEASE.clear()
    with engine.start_worker([BLOCK_QUEUE]):
        try:
            d = dispatch_job(blocks, {"workdir": workdir, "how": how})
            # Without the watchdog the job would run forever ("hangs": until RELEASE).
            info = wait_for_job(d.job_id, timeout=45)
            # The worker serves other jobs meanwhile and afterwards.
            quick_job = dispatch_job(quick, {"workdir": workdir})
            assert wait_for_job(quick_job.job_id).status == JobStatus.SUCCEEDED
        finally:
            RELEASE.set()
    # The worker stopped, so the blocked thread has returned: it changed nothing.
    assert info.status == JobStatus.FAILED, info
    assert get_job(d.job_id) == info
    assert info.error is not None and info.error.type == "WorkflowBlockedError"
    message = info.error.message
    assert d.job_id in message and "2 s" in message
    assert "move blocking or cpu-heavy work" in message.lower() and "ctx.step.run" in message
    assert "in blocks" in message and info.error.traceback  # where the handler was
    assert (info.attempts, count(workdir, "before"), count(workdir, "after")) == (1, 1, 0)


def test_the_block_watchdog_sees_the_activations_of_an_ordinary_job(
    engine: TemporalEngine, workdir: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The watchdog recognises temporalio's call of its executor; if temporalio changed
    that call, blocked jobs would hang again, silently: this test would fail."""

    async def terminate(workflow_id: str, run_id: str, error: object) -> None:
        raise AssertionError(f"an ordinary job was terminated: {error}")

    watchdog = ActivationWatchdog(terminate)
    caplog.set_level(logging.ERROR, logger="jobkit.temporal.watchdog")
    with engine.start_worker([BLOCK_QUEUE], workflow_task_executor=watchdog):
        d = dispatch_job(quick, {"workdir": workdir})
        assert wait_for_job(d.job_id, timeout=30).status == JobStatus.SUCCEEDED
    assert watchdog.activations >= 1
    complaints = [r.getMessage() for r in caplog.records if r.name == "jobkit.temporal.watchdog"]
    assert not complaints


def test_an_operators_termination_still_means_cancelled(
    engine: TemporalEngine, jobkit_temporal_server: TemporalDevServer, workdir: str
) -> None:
    d = dispatch_job(waits, {"workdir": workdir})
    eventually(lambda: count(workdir, "waiting") == 1)
    terminate(jobkit_temporal_server.address, d.job_id, "stopped by an operator")
    info = get_job(d.job_id)  # a termination is done when its call returns
    assert (info.status, info.error) == (JobStatus.CANCELLED, None)
    open_gate(workdir, "wait")


# -- non-determinism -----------------------------------------------------------------------


def test_a_replay_that_diverges_fails_the_job_with_the_cause(
    engine: TemporalEngine, workdir: str
) -> None:
    """A worker that caches nothing replays every workflow task: the step id drawn from
    uuid4 outside a step differs, which Temporal reports as non-determinism."""
    with engine.start_worker([REPLAY_QUEUE], max_cached_workflows=0):
        d = dispatch_job(nondeterministic, {"workdir": workdir})
        info = wait_for_job(d.job_id, timeout=30)
    assert info.status == JobStatus.FAILED, info
    assert info.error is not None and info.error.type == "NondeterminismError"  # not attempt 1's
    message = info.error.message
    assert d.job_id in message and "TMPRL1100" in message and "pick-" in message
    assert "deterministic" in message and "ctx.step.run" in message
    assert (info.attempts, count(workdir, "pick"), count(workdir, "after")) == (2, 1, 0)


def test_a_workflow_that_cannot_start_fails_instead_of_retrying(
    engine: TemporalEngine, jobkit_temporal_server: TemporalDevServer
) -> None:
    """A fault of the workflow itself (here an input from an incompatible client) would
    fail its workflow task on every retry: it fails the job instead."""
    job_id = f"bad-input-{uuid.uuid4().hex}"
    memo = {"jobkit": {"job_name": "hardening.waits", "queue": QUEUE, "status": "queued"}}

    async def start() -> None:
        client = await Client.connect(jobkit_temporal_server.address)
        await client.start_workflow(
            "jobkit.job", {"job_name": 3}, id=job_id, task_queue=PREFIX + QUEUE, memo=memo
        )

    asyncio.run(start())
    info = wait_for_job(job_id, timeout=30)
    assert info.status == JobStatus.FAILED, info
    assert info.error is not None and info.error.type == "ValidationError"
    assert "JobInput" in info.error.message


# -- cancellation --------------------------------------------------------------------------


def test_a_cancel_reaches_an_async_step_within_seconds(
    engine: TemporalEngine, jobkit_temporal_server: TemporalDevServer, workdir: str
) -> None:
    d = dispatch_job(waits, {"workdir": workdir})
    eventually(lambda: count(workdir, "waiting") == 1)
    eventually(lambda: has_heartbeat(jobkit_temporal_server.address, d.job_id))
    assert cancel_job(d.job_id) is True
    # The job ends cancelled once its step has stopped, which it does when the cancel
    # reaches it through a heartbeat's reply: with temporalio's default throttle that
    # would be after 24 s, past this deadline; with jobkit's, within about a second.
    assert wait_for_job(d.job_id, timeout=15).status == JobStatus.CANCELLED
    assert count(workdir, "wait-cancelled") == 1
    open_gate(workdir, "wait")  # the wait would end now, had the step not been stopped
    # The worker runs a job after that: a marker would have been written by then.
    assert wait_for_job(dispatch_job(waits, {"workdir": workdir}).job_id).status == (
        JobStatus.SUCCEEDED
    )
    assert (count(workdir, "waiting"), count(workdir, "marker")) == (2, 1)


def test_a_handler_that_swallows_the_cancel_does_not_sleep_on(
    engine: TemporalEngine, workdir: str
) -> None:
    """A long sleep after the cancel ends the job cancelled, as on every engine (there, a
    long sleep ends the execution, and settle says cancelled)."""
    d = dispatch_job(lingers, {"workdir": workdir})
    eventually(lambda: count(workdir, "waiting") == 1)
    assert cancel_job(d.job_id) is True
    info = wait_for_job(d.job_id, timeout=20)  # not a day
    assert (info.status, count(workdir, "wait-cancelled")) == (JobStatus.CANCELLED, 1)


@pytest.mark.parametrize("delay", [None, timedelta(minutes=5)])
def test_a_job_no_worker_picked_up_is_cancelled_at_once(
    engine: TemporalEngine, workdir: str, delay: timedelta | None
) -> None:
    d = dispatch_job(idle, {"workdir": workdir}, delay=delay)
    assert get_job(d.job_id).status in (JobStatus.QUEUED, JobStatus.SCHEDULED)
    assert cancel_job(d.job_id) is True
    info = get_job(d.job_id)  # at once: no worker has to come and end it
    assert (info.status, info.error, info.attempts) == (JobStatus.CANCELLED, None, 0)
    assert cancel_job(d.job_id) is False
    with engine.start_worker([IDLE_QUEUE]):  # a worker comes: it has nothing to run
        other = dispatch_job(idle, {"workdir": workdir})
        assert wait_for_job(other.job_id).status == JobStatus.SUCCEEDED
    assert count(workdir, "idle") == 1
    assert get_job(d.job_id).status == JobStatus.CANCELLED
