"""Jobs of test_temporal_operations.py, imported by its worker processes too."""

from __future__ import annotations

from pydantic import BaseModel

from jobkit.queues import QueueSpec, default_queues
from jobkit_engine import JobContext, job

BURST_QUEUE = "temporal-ops-burst"
default_queues.register(QueueSpec(BURST_QUEUE, concurrency=100))


class Numbered(BaseModel):
    n: int


def echo(n: int) -> int:
    return n


@job("temporal-ops.echo", queue=BURST_QUEUE, retry=1)
async def echo_job(ctx: JobContext, payload: Numbered) -> int:
    return await ctx.step.run("echo", echo, payload.n)
