"""`replay_temporal_history`: a job's real Temporal history replays against unchanged code
and fails, naming the job, against code that asks for other steps."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from jobkit.queues import QueueSpec, default_queues
from jobkit_dispatch import dispatch_job
from jobkit_dispatch.testing import replay_temporal_history, use_engine, wait_for_job
from jobkit_dispatch.testing.temporal_server import TemporalDevServer
from jobkit_engine import JobContext, StrictModeError, default_registry, job

pytest.importorskip("temporalio")

from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter

from jobkit_dispatch.engines.temporal import TemporalEngine

QUEUE = "temporal-replay-check"
NAME = "replay-check.order"
default_queues.register(QueueSpec(QUEUE, concurrency=1, default_timeout=timedelta(seconds=30)))


def reserve(order: str) -> str:
    return f"reserved {order}"


def charge(order: str) -> str:
    return f"charged {order}"


@job(NAME, queue=QUEUE)
async def order(ctx: JobContext) -> list[str]:
    reserved = await ctx.step.run("reserve", reserve, ctx.job_id)
    await ctx.step.sleep("settle", 0.6)  # a durable timer: over the engine's threshold
    return [reserved, await ctx.step.run("charge", charge, ctx.job_id)]


async def order_v2(ctx: JobContext) -> list[str]:
    """The same job after a change: the first step got a new id."""
    reserved = await ctx.step.run("reserve-stock", reserve, ctx.job_id)
    await ctx.step.sleep("settle", 0.6)
    return [reserved, await ctx.step.run("charge", charge, ctx.job_id)]


@pytest.fixture(scope="module")
def history(jobkit_temporal_server: TemporalDevServer) -> Iterator[WorkflowHistory]:
    engine = TemporalEngine(
        jobkit_temporal_server.address, task_queue_prefix="replay-check-", sleep_threshold=0.5
    )
    try:
        with engine.start_worker([QUEUE]), use_engine(engine):
            job_id = dispatch_job(order).job_id
            info = wait_for_job(job_id, timeout=30)
            assert info.status == "succeeded", info
        yield asyncio.run(_fetch(jobkit_temporal_server.address, job_id))
    finally:
        engine.close()


async def _fetch(address: str, job_id: str) -> WorkflowHistory:
    client = await Client.connect(address, data_converter=pydantic_data_converter)
    return await client.get_workflow_handle(job_id).fetch_history()


@pytest.fixture
def changed_order() -> Iterator[None]:
    original = default_registry.get(NAME)
    default_registry.unregister(NAME)
    job(NAME, queue=QUEUE)(order_v2)
    try:
        yield
    finally:
        default_registry.unregister(NAME)
        default_registry.register(original)


def test_an_unchanged_job_replays_its_history(history: WorkflowHistory, tmp_path: Path) -> None:
    replay_temporal_history(history)
    replay_temporal_history(history.to_json(), job_id=history.workflow_id)
    saved = tmp_path / "order.json"
    saved.write_text(history.to_json())
    replay_temporal_history(saved, job_id=history.workflow_id)


def test_a_changed_step_id_fails_the_replay_naming_the_job(
    history: WorkflowHistory, changed_order: None
) -> None:
    with pytest.raises(StrictModeError) as failure:
        replay_temporal_history(history.to_json(), job_id=history.workflow_id)
    message = str(failure.value)
    assert f"job {NAME!r} no longer replays the Temporal history" in message
    assert "NondeterminismError" in message
    assert (
        "scheduled event 'reserve' does not match activity id of activity command 'reserve-stock'"
        in message
    )
    assert "keep the steps they already passed" in message


def test_json_needs_the_job_id(history: WorkflowHistory) -> None:
    with pytest.raises(TypeError, match="job_id"):
        replay_temporal_history(history.to_json())
