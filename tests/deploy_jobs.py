"""The jobs of a worker fleet before a deploy: `deploy_jobs_new` adds one to them."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel

from jobkit.queues import QueueSpec, default_queues
from jobkit_dispatch.conformance._files import tally
from jobkit_engine import JobContext, job

QUEUE = "deploy"
default_queues.register(QueueSpec(QUEUE, concurrency=2, default_timeout=timedelta(seconds=60)))


class Work(BaseModel):
    workdir: str


@job("deploy.old", queue=QUEUE, retry=1)
async def old(ctx: JobContext, payload: Work) -> str:
    await ctx.step.run("tally", tally, payload.workdir, "old")
    return "old"
