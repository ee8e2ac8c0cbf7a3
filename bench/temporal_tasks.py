"""The one-step job of the Temporal benchmark, as a jobkit job and as a plain workflow.

A module of its own so that the plain workflow's module can be passed through the
workflow sandbox, as temporalio's docs advise for workflow modules.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel
from temporalio import activity, workflow

from jobkit_engine import JobContext, job

QUEUE = "temporal-bench"


class Ping(BaseModel):
    n: int


async def echo(n: int) -> int:
    return n


@job("temporal-bench.one-step", queue=QUEUE, retry=1)
async def one_step(ctx: JobContext, payload: Ping) -> int:
    return await ctx.step.run("echo", echo, payload.n)


@activity.defn(name="plain-echo")
async def plain_echo(n: int) -> int:
    return n


@workflow.defn(name="plain-one-step")
class PlainOneStep:
    @workflow.run
    async def run(self, n: int) -> int:
        return await workflow.execute_activity(
            plain_echo, n, start_to_close_timeout=timedelta(minutes=5)
        )
