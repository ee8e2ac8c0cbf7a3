"""Temporal's history limit: a job whose history nears it fails with a `HistoryLimitError`,
after one warning, before the server's hard limit would end it with no error of jobkit's,
whatever adds the events — steps, sleeps, or a wait for a slot that lasts (on a real dev
server and worker, with a limit of 60 events instead of 40,000).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta

import pytest
from pydantic import BaseModel

from jobkit.queues import QueueSpec, default_queues
from jobkit_dispatch import dispatch_job
from jobkit_dispatch.conformance._files import count, open_gate, tally, wait_for_gate
from jobkit_dispatch.testing import use_engine, wait_for_job
from jobkit_dispatch.testing.temporal_server import TemporalDevServer
from jobkit_engine import JobContext, JobInfo, JobStatus, job
from tests.waiting import eventually

pytest.importorskip("temporalio")

from jobkit_dispatch.engines.temporal import TemporalEngine, _job_slot

PREFIX = "history-"
QUEUE = "temporal-history"  # served by the module's worker
REPLAY_QUEUE = "temporal-history-replay"  # a worker that caches no workflow, per test
ONE_QUEUE = "temporal-history-one"  # one slot: a second job waits for it
for _name, _size in ((QUEUE, 2), (REPLAY_QUEUE, 2), (ONE_QUEUE, 1)):
    default_queues.register(
        QueueSpec(_name, concurrency=_size, default_timeout=timedelta(seconds=60))
    )


class Work(BaseModel):
    workdir: str
    role: str = ""


def note(workdir: str, name: str) -> str:
    tally(workdir, name)
    return name


async def hold(workdir: str) -> bool:
    tally(workdir, "holding")
    return await wait_for_gate(workdir, "hold")


@job("history.many-steps", queue=REPLAY_QUEUE, retry=1)
async def many_steps(ctx: JobContext, payload: Work) -> int:
    for i in range(100):
        await ctx.step.run(f"step-{i}", note, payload.workdir, "step")
    return 100


@job("history.naps", queue=QUEUE, retry=1)
async def naps(ctx: JobContext, payload: Work) -> int:
    """Adds events with sleeps only: a timer each (and a slot again, for a long one)."""
    for i in range(100):
        ctx.report_progress(i / 100, f"nap {i}")
        await ctx.step.sleep(f"nap-{i}", timedelta(milliseconds=10))
    return 100


@job("history.one-slot", queue=ONE_QUEUE, retry=1)
async def one_slot(ctx: JobContext, payload: Work) -> str:
    await ctx.step.run("mark", note, payload.workdir, payload.role)
    if payload.role == "holder":
        await ctx.step.run("hold", hold, payload.workdir)
    return payload.role


@pytest.fixture(scope="module")
def engine(jobkit_temporal_server: TemporalDevServer) -> Iterator[TemporalEngine]:
    engine = TemporalEngine(jobkit_temporal_server.address, task_queue_prefix=PREFIX)
    with engine.start_worker([QUEUE]):
        yield engine
    engine.close()


def low_limits(server: TemporalDevServer, **options: float) -> TemporalEngine:
    """An engine whose jobs warn at 30 history events and fail at 60."""
    return TemporalEngine(
        server.address,
        task_queue_prefix=PREFIX,
        history_warn_events=30,
        history_limit_events=60,
        **options,
    )


def history_error(info: JobInfo) -> str:
    """The message of a job that failed at the low limit (after at least 60 events)."""
    assert info.status == JobStatus.FAILED, info
    assert info.error is not None and info.error.type == "HistoryLimitError", info.error
    message = info.error.message
    assert info.job_id in message and "limit of 60" in message and "split" in message
    assert int(message.split(" has ")[1].split(" events")[0]) >= 60
    return message


def test_a_job_near_the_history_limit_is_warned_once_then_fails(
    engine: TemporalEngine,
    jobkit_temporal_server: TemporalDevServer,
    workdir: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    low = low_limits(jobkit_temporal_server)
    caplog.set_level(logging.WARNING, logger="temporalio.workflow")
    # Replaying every task runs each check again; the warning still comes once.
    with engine.start_worker([REPLAY_QUEUE], max_cached_workflows=0), use_engine(low):
        d = dispatch_job(many_steps, {"workdir": workdir})
        info = wait_for_job(d.job_id, timeout=60)
    low.close()
    assert "step 'step-" in history_error(info)
    assert info.attempts == 1
    steps = count(workdir, "step")
    assert 3 <= steps < 30  # stopped long before the 100 steps
    warnings = [
        r for r in caplog.records if r.name == "temporalio.workflow" and d.job_id in r.getMessage()
    ]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "consider splitting" in warnings[0].getMessage()


@pytest.mark.parametrize("threshold", [5.0, 0.0], ids=["short-sleeps", "durable-sleeps"])
def test_sleeps_alone_reach_the_history_limit_and_fail_the_job(
    engine: TemporalEngine, jobkit_temporal_server: TemporalDevServer, threshold: float
) -> None:
    """Timers add events as steps do; durable sleeps also take a slot again each time."""
    low = low_limits(jobkit_temporal_server, sleep_threshold=threshold)
    with use_engine(low):
        d = dispatch_job(naps, {"workdir": "-"})
        info = wait_for_job(d.job_id, timeout=60)
    low.close()
    history_error(info)
    assert info.attempts == 1
    assert info.progress is not None and info.progress.message is not None
    assert int(info.progress.message.removeprefix("nap ")) < 50  # of the 100 sleeps


def test_a_job_waiting_for_a_slot_reaches_the_history_limit_and_fails(
    engine: TemporalEngine,
    jobkit_temporal_server: TemporalDevServer,
    workdir: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A job queued for weeks asks for a slot again every few minutes: here every 50 ms."""
    monkeypatch.setattr(_job_slot, "SLOT_RECHECK", timedelta(milliseconds=50))
    monkeypatch.setattr(_job_slot, "SLOT_RECHECK_MAX", timedelta(milliseconds=50))
    low = low_limits(jobkit_temporal_server)
    with engine.start_worker([ONE_QUEUE]), use_engine(low):
        holder = dispatch_job(one_slot, {"workdir": workdir, "role": "holder"})
        eventually(lambda: count(workdir, "holding") == 1)  # it has the only slot
        queued = dispatch_job(one_slot, {"workdir": workdir, "role": "queued"})
        info = wait_for_job(queued.job_id, timeout=60)
        open_gate(workdir, "hold")
        assert wait_for_job(holder.job_id, timeout=30).status == JobStatus.SUCCEEDED
        # The failed job left its place in the queue: the slot goes to the next job.
        after = dispatch_job(one_slot, {"workdir": workdir, "role": "after"})
        assert wait_for_job(after.job_id, timeout=30).status == JobStatus.SUCCEEDED
    low.close()
    assert "another request for a slot" in history_error(info)
    assert (info.attempts, count(workdir, "queued")) == (0, 0)  # its handler never ran
