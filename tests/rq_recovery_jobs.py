"""Jobs for the RQ recovery tests (tests/test_rq_recovery.py), on a queue of their own.

`rqrecovery.steps` runs three steps with a short sleep between the first two; each step
counts its runs in a file, and the second fails while the workdir holds a `broken` file,
so a test can "fix the bug" by deleting it and retry the job.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel

from jobkit.queues import QueueSpec, default_queues
from jobkit_dispatch.conformance._files import tally, wait_for_gate
from jobkit_engine import JobContext, Retry, job

QUEUE = "rq-recovery"
OTHER_QUEUE = "rq-recovery-other"
IDLE_QUEUE = "rq-recovery-idle"  # no worker serves it: its jobs stay queued
PURGE_QUEUE = "rq-recovery-purge"
SMALL_QUEUE, BIG_QUEUE = "rq-recovery-small", "rq-recovery-big"
for _name in (QUEUE, OTHER_QUEUE, IDLE_QUEUE, PURGE_QUEUE, SMALL_QUEUE, BIG_QUEUE):
    default_queues.register(QueueSpec(_name, concurrency=8, default_timeout=timedelta(seconds=30)))


class Work(BaseModel):
    workdir: str


class BrokenError(RuntimeError):
    """What the second step raises until the test fixes it."""


def count(workdir: str, name: str) -> str:
    tally(workdir, name)
    return name


def fragile(workdir: str) -> str:
    tally(workdir, "second")
    if Path(workdir, "broken").exists():
        raise BrokenError("the second step is broken")
    return "second"


@job("rqrecovery.steps", queue=QUEUE, retry=Retry(attempts=2, initial_delay=0))
async def steps(ctx: JobContext, payload: Work) -> list[str]:
    first = await ctx.step.run("first", count, payload.workdir, "first")
    await ctx.step.sleep("nap", timedelta(milliseconds=20))
    second = await ctx.step.run("second", fragile, payload.workdir)
    third = await ctx.step.run("third", count, payload.workdir, "third")
    return [first, second, third]


class Nothing(BaseModel):
    fail: bool = False


@job("rqrecovery.noop", queue=QUEUE, retry=1)
async def noop(ctx: JobContext, payload: Nothing) -> None:
    if payload.fail:
        raise BrokenError("asked to fail")


@job("rqrecovery.other", queue=QUEUE, retry=1)
async def other(ctx: JobContext, payload: Nothing) -> None:
    if payload.fail:
        raise BrokenError("asked to fail")


@job("rqrecovery.elsewhere", queue=OTHER_QUEUE, retry=1)
async def elsewhere(ctx: JobContext, payload: Nothing) -> None:
    if payload.fail:
        raise BrokenError("asked to fail")


class Gated(BaseModel):
    workdir: str
    gate: str


@job("rqrecovery.gated", queue=QUEUE, retry=1)
async def gated(ctx: JobContext, payload: Gated) -> None:
    """Runs (in its step) until the test opens the gate."""
    await ctx.step.run("wait", wait_for_gate, payload.workdir, payload.gate)


@job("rqrecovery.sleeper", queue=QUEUE, retry=1)
async def sleeper(ctx: JobContext, payload: Nothing) -> None:
    """Sleeps (durably: the worker is freed) for an hour."""
    await ctx.step.sleep("long", timedelta(hours=1))
