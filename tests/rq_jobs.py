"""Jobs for the RQ engine's own tests, on queues of their own."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import timedelta

from pydantic import BaseModel

from jobkit.queues import QueueSpec, default_queues
from jobkit_dispatch.conformance._files import count, tally, wait_for_gate
from jobkit_engine import JobContext, Retry, job

for _name in ("rq-crash", "rq-shutdown", "rq-messages"):
    default_queues.register(QueueSpec(_name, concurrency=1, default_timeout=timedelta(seconds=60)))
WIDE = 40  # more than asyncio's default thread pool ever has (32)
default_queues.register(
    QueueSpec("rq-wide", concurrency=WIDE, default_timeout=timedelta(seconds=60))
)


class Work(BaseModel):
    workdir: str
    gate: str = "go"


def record(workdir: str, name: str) -> str:
    tally(workdir, name)
    return name


async def _two_steps(ctx: JobContext, payload: Work) -> list[str]:
    first = await ctx.step.run("first", record, payload.workdir, "first")
    await ctx.step.run(f"waiting-{ctx.attempt}", tally, payload.workdir, f"waiting-{ctx.attempt}")
    if not await ctx.step.run(f"gate-{ctx.attempt}", wait_for_gate, payload.workdir, payload.gate):
        raise TimeoutError("gate never opened")
    second = await ctx.step.run("second", record, payload.workdir, "second")
    return [first, second]


crashy = job("rqtest.crashy", queue="rq-crash", retry=Retry(attempts=3, initial_delay=0))(
    _two_steps
)
held = job("rqtest.held", queue="rq-shutdown", retry=Retry(attempts=3, initial_delay=0))(_two_steps)


class Nap(BaseModel):
    seconds: float


@job("rqtest.nap", queue="rq-messages", retry=1)
async def nap(ctx: JobContext, payload: Nap) -> None:
    await asyncio.sleep(payload.seconds)


class Count(BaseModel):
    workdir: str
    name: str


@job("rqtest.count", queue="rq-messages", retry=3)
async def count_once(ctx: JobContext, payload: Count) -> str:
    await ctx.step.run("tally", tally, payload.workdir, payload.name)
    return payload.name


class SlowCount(BaseModel):
    workdir: str
    name: str
    nap: float = 0.0


def doze(seconds: float) -> None:
    time.sleep(seconds)


@job("rqtest.count_slowly", queue="rq-messages", retry=3)
async def count_slowly(ctx: JobContext, payload: SlowCount) -> str:
    """Counts its one run, then keeps its worker busy a while, so that a queue builds up."""
    await ctx.step.run("tally", tally, payload.workdir, payload.name)
    await ctx.step.run("nap", doze, payload.nap)
    return payload.name


@job("rqtest.ok", queue="rq-messages", retry=1)
async def ok(ctx: JobContext, payload: Work) -> str:
    await ctx.step.run("tally", tally, payload.workdir, "ok")
    return "ok"


@job("rqtest.stubborn", queue="rq-messages", retry=1)
async def stubborn(ctx: JobContext, payload: Work) -> str:
    """Loses the first cancellation, as Python 3.11's `asyncio.wait_for` (around every
    redis-py command) does when it lands just as the awaitable it wraps completes."""
    ctx.report_progress(0.5, "holding")  # the test cancels once this is visible
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(60)
    await asyncio.sleep(60)  # not a step: only a second interruption ends this
    await ctx.step.run("finished", tally, payload.workdir, "finished")
    return "finished"


@job("rqtest.swallows", queue="rq-messages", retry=1)
async def swallows(ctx: JobContext, payload: Work) -> str:
    """Swallows the cancellation, then goes straight on to a step, inside an `except
    Exception` that must not catch the step's refusal."""
    ctx.report_progress(0.5, "holding")  # the test cancels once this is visible
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(60)
    try:
        await ctx.step.run("after", tally, payload.workdir, "after")
    except Exception:
        return "swallowed"
    return "after"


def meet(workdir: str, expected: int) -> bool:
    """A synchronous step that waits until `expected` of its kind run at the same time."""
    tally(workdir, "in")
    deadline = time.monotonic() + 10
    while count(workdir, "in") < expected:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@job("rqtest.meet", queue="rq-wide", retry=1)
async def meet_all(ctx: JobContext, payload: Work) -> bool:
    return await ctx.step.run("meet", meet, payload.workdir, WIDE)
