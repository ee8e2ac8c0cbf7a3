"""Jobs for the job log tests: one for each outcome a worker logs, on a queue of their own.

Every payload carries `SECRET`, which no log line may show; the flaky job's error holds
a Redis URL with a password, which the line masks, and a line break, which it joins.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from pydantic import BaseModel

from jobkit.queues import QueueSpec, default_queues
from jobkit_dispatch.conformance._files import tally
from jobkit_engine import JobContext, NonRetryableError, Retry, job

QUEUE = "joblogs"
default_queues.register(QueueSpec(QUEUE, concurrency=4, default_timeout=timedelta(seconds=30)))

SECRET = "payload-secret-4711"
URL_PASSWORD = "url-secret-0815"
NAP = timedelta(seconds=2)  # longer than the tests' sleep threshold: the job sleeps durably


class Work(BaseModel):
    workdir: str
    secret: str = SECRET


async def wait_to_be_cancelled(workdir: str) -> None:
    tally(workdir, "waiting")
    await asyncio.sleep(30)


@job("joblogs.ok", queue=QUEUE, retry=1)
async def ok(ctx: JobContext, payload: Work) -> str:
    return "ok"


@job("joblogs.flaky", queue=QUEUE, retry=Retry(attempts=3, initial_delay=0.2, jitter=0))
async def flaky(ctx: JobContext, payload: Work) -> str:
    if ctx.attempt == 1:
        raise ValueError(f"first try\nwhile calling redis://app:{URL_PASSWORD}@db:6379/0")
    return "ok"


@job("joblogs.broken", queue=QUEUE, retry=3)
async def broken(ctx: JobContext, payload: Work) -> str:
    raise NonRetryableError("broken for good")


@job("joblogs.hangs", queue=QUEUE, retry=1)
async def hangs(ctx: JobContext, payload: Work) -> None:
    await ctx.step.run("wait", wait_to_be_cancelled, payload.workdir)


@job("joblogs.sleeper", queue=QUEUE, retry=1)
async def sleeper(ctx: JobContext, payload: Work) -> str:
    await ctx.step.sleep("nap", NAP)
    return "rested"


# What each job's lines say, in order (the `outcome` of each record).
EXPECTED = {
    "joblogs.ok": ["succeeded"],
    "joblogs.flaky": ["retrying", "succeeded"],
    "joblogs.broken": ["failed"],
    "joblogs.hangs": ["cancelled"],
    "joblogs.sleeper": ["sleeping", "succeeded"],
}
