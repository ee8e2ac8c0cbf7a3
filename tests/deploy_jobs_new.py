"""A job the deploy adds: workers that do not import this module do not know it."""

from __future__ import annotations

from datetime import timedelta

from jobkit_dispatch.conformance._files import tally
from jobkit_engine import JobContext, job
from tests.deploy_jobs import QUEUE, Work


@job("deploy.new", queue=QUEUE, retry=1)
async def new(ctx: JobContext, payload: Work) -> str:
    await ctx.step.run("tally", tally, payload.workdir, "new")
    return "new"


@job("deploy.new_napper", queue=QUEUE, retry=1)
async def new_napper(ctx: JobContext, payload: Work) -> str:
    """Sleeps durably in the middle: its workflow may wake on another worker."""
    await ctx.step.run("before", tally, payload.workdir, "before")
    await ctx.step.sleep("nap", timedelta(seconds=2))
    await ctx.step.run("after", tally, payload.workdir, "after")
    return "rested"
