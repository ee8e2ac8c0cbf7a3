"""Jobs of test_temporal_operations.py, imported by its worker processes too."""

from __future__ import annotations

import os
from datetime import timedelta

from pydantic import BaseModel

from jobkit.queues import QueueSpec, default_queues
from jobkit_dispatch.conformance._files import tally, wait_for_gate
from jobkit_engine import JobContext, job

BURST_QUEUE = "temporal-ops-burst"
KILL_QUEUE = "temporal-ops-kill"
default_queues.register(QueueSpec(BURST_QUEUE, concurrency=100))
default_queues.register(QueueSpec(KILL_QUEUE, concurrency=2, default_timeout=timedelta(minutes=2)))


class Numbered(BaseModel):
    n: int


class Work(BaseModel):
    workdir: str


def echo(n: int) -> int:
    return n


async def hold(workdir: str) -> int:
    """Count a run of this step by its worker's pid, then wait for the test's gate."""
    tally(workdir, "hold")
    tally(workdir, f"hold-{os.getpid()}")
    await wait_for_gate(workdir, "release")
    return os.getpid()


@job("temporal-ops.echo", queue=BURST_QUEUE, retry=1)
async def echo_job(ctx: JobContext, payload: Numbered) -> int:
    return await ctx.step.run("echo", echo, payload.n)


@job("temporal-ops.hold", queue=KILL_QUEUE, retry=1)
async def hold_job(ctx: JobContext, payload: Work) -> int:
    return await ctx.step.run("hold", hold, payload.workdir)
