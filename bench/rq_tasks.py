"""The no-op job, as a plain RQ function and as a jobkit job."""

from __future__ import annotations

from pydantic import BaseModel

from jobkit import QueueSpec, default_queues
from jobkit_engine import JobContext, job

QUEUE = "bench"
default_queues.register(QueueSpec(QUEUE, concurrency=10))


def noop() -> None:
    return None


class Empty(BaseModel):
    pass


@job("bench.noop", queue=QUEUE, retry=1)
async def jobkit_noop(ctx: JobContext, payload: Empty) -> None:
    return None
