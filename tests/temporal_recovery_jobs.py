"""Jobs of test_temporal_recovery.py: each step counts its runs in the test's workdir."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel

from jobkit.queues import QueueSpec, default_queues
from jobkit_dispatch.conformance._files import count, tally
from jobkit_engine import JobContext, Retry, job

QUEUE = "temporal-recovery"
LIST_QUEUE = "temporal-recovery-list"
PURGE_QUEUE = "temporal-recovery-purge"
IDLE_QUEUE = "temporal-recovery-idle"  # no worker serves it: its jobs stay queued
for _queue in (QUEUE, LIST_QUEUE, PURGE_QUEUE, IDLE_QUEUE):
    default_queues.register(QueueSpec(_queue, concurrency=4, default_timeout=timedelta(seconds=30)))

BROKEN = "charge-broken"  # while this file exists in the workdir, the charge step fails


class Work(BaseModel):
    workdir: str
    label: str = ""


def counted(workdir: str, name: str) -> int:
    tally(workdir, name)
    return count(workdir, name)


def charge(workdir: str) -> str:
    tally(workdir, "charge")
    if Path(workdir, BROKEN).exists():
        raise ValueError("the card was declined")
    return "charged"


@job("recovery.order", queue=QUEUE, retry=1)
async def order(ctx: JobContext, payload: Work) -> list[object]:
    reserved = await ctx.step.run("reserve", counted, payload.workdir, "reserve")
    await ctx.step.sleep("settle", 0.05)  # short: the job keeps its slot
    await ctx.step.sleep("cool-down", 0.6)  # past the engine's threshold: a durable timer
    charged = await ctx.step.run("charge", charge, payload.workdir)
    notified = await ctx.step.run("notify", counted, payload.workdir, "notify")
    return [reserved, charged, notified]


def bulk(n: int) -> str:
    return "x" * n


@job("recovery.bulky", queue=QUEUE, retry=1)
async def bulky(ctx: JobContext, payload: Work) -> str:
    """Two results of a million bytes each: too much to carry into a retry."""
    for step in ("first-half", "second-half"):
        await ctx.step.run(step, bulk, 1_000_000)
    return await ctx.step.run("charge", charge, payload.workdir)


def label(text: str) -> str:
    return text


@job("recovery.quick", queue=LIST_QUEUE, retry=1)
async def quick(ctx: JobContext, payload: Work) -> str:
    return await ctx.step.run("label", label, payload.label)


@job("recovery.fails", queue=LIST_QUEUE, retry=1)
async def fails(ctx: JobContext, payload: Work) -> str:
    return await ctx.step.run("charge", charge, payload.workdir)


@job("recovery.waits", queue=IDLE_QUEUE, retry=1)
async def waits(ctx: JobContext, payload: Work) -> str:
    return await ctx.step.run("label", label, payload.label)


@job("recovery.purged", queue=PURGE_QUEUE, retry=1)
async def purged(ctx: JobContext, payload: Work) -> str:
    if payload.label == "fail":
        return await ctx.step.run("charge", charge, payload.workdir)
    return await ctx.step.run("label", label, payload.label)


UPGRADE_QUEUE = "temporal-recovery-upgrade"
default_queues.register(
    QueueSpec(UPGRADE_QUEUE, concurrency=2, default_timeout=timedelta(seconds=30))
)


def flaky(workdir: str) -> str:
    """Fails its first run, then succeeds."""
    tally(workdir, "flaky")
    if count(workdir, "flaky") == 1:
        raise ConnectionError("the first run fails")
    return "ok"


@job("recovery.upgrade", queue=UPGRADE_QUEUE, retry=Retry(attempts=3, initial_delay=0.2))
async def upgrade(ctx: JobContext, payload: Work) -> list[object]:
    """A job whose history was recorded by an earlier jobkit (tests/data): every kind of
    event that the attempt log and step summaries touch — a retry, both kinds of sleep,
    progress."""
    first = await ctx.step.run("first", counted, payload.workdir, "first")
    await ctx.step.sleep("short", 0.05)
    await ctx.step.sleep("long", 0.6)
    ctx.report_progress(0.5, "half")
    return [first, await ctx.step.run("flaky", flaky, payload.workdir)]
