"""A job the deploy adds: workers that do not import this module do not know it."""

from __future__ import annotations

from jobkit_dispatch.conformance._files import tally
from jobkit_engine import JobContext, job
from tests.deploy_jobs import QUEUE, Work


@job("deploy.new", queue=QUEUE, retry=1)
async def new(ctx: JobContext, payload: Work) -> str:
    await ctx.step.run("tally", tally, payload.workdir, "new")
    return "new"
