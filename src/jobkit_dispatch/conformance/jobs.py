"""The jobs the conformance suite dispatches. A worker under test must import this module.

They run on the `conformance` queue, whose concurrency of 1 lets the suite tell a job that
holds the worker from one that freed it. Like any job, they touch the outside world (the
files the suite watches) only inside steps: code outside steps must be deterministic.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel

from jobkit.queues import QueueSpec, default_queues
from jobkit_dispatch.conformance._files import tally, wait_for_gate
from jobkit_engine import JobContext, NonRetryableError, Retry, job

QUEUE = "conformance"
default_queues.register(QueueSpec(QUEUE, concurrency=1, default_timeout=timedelta(seconds=60)))

#: The retry policy of `conformance.flaky`: the suite checks these exact waits.
FLAKY_RETRY = Retry(attempts=3, backoff=2.0, initial_delay=1.0, jitter=0.0)


class Echo(BaseModel):
    text: str
    times: int = 1
    workdir: str | None = None


class EchoResult(BaseModel):
    text: str
    job_id: str
    engine: str


@job("conformance.echo", queue=QUEUE, retry=1)
async def echo(ctx: JobContext, payload: Echo) -> EchoResult:
    if payload.workdir:
        await ctx.step.run("tally", tally, payload.workdir, "echo")
    return EchoResult(text=payload.text * payload.times, job_id=ctx.job_id, engine=ctx.engine)


class Part(BaseModel):
    value: int
    at: datetime


class StepsPayload(BaseModel):
    workdir: str


def make_part(workdir: str) -> Part:
    tally(workdir, "step-a")
    return Part(value=41, at=datetime(2030, 1, 2, 3, 4, 5).astimezone())


async def fail_first_attempt(workdir: str, attempt: int, part: Part) -> int:
    tally(workdir, "step-b")
    if attempt == 1:
        raise ConnectionError("step b fails on the first attempt")
    return part.value + 1


@job("conformance.steps", queue=QUEUE, retry=Retry(attempts=2, initial_delay=0.0))
async def steps(ctx: JobContext, payload: StepsPayload) -> dict[str, object]:
    part = await ctx.step.run("a", make_part, payload.workdir)
    if not isinstance(part, Part):  # a replayed step must return what the live one did
        raise NonRetryableError(f"step 'a' replayed as {type(part).__name__}, not Part")
    total = await ctx.step.run("b", fail_first_attempt, payload.workdir, ctx.attempt, part)
    return {"total": total, "attempt": ctx.attempt}


class Flaky(BaseModel):
    workdir: str
    failures: int


@job("conformance.flaky", queue=QUEUE, retry=FLAKY_RETRY)
async def flaky(ctx: JobContext, payload: Flaky) -> int:
    await ctx.step.run(f"tally-{ctx.attempt}", tally, payload.workdir, "flaky")
    if ctx.attempt <= payload.failures:
        raise ConnectionError(f"attempt {ctx.attempt} fails")
    return ctx.attempt


class Rejected(NonRetryableError):
    """A job's own non-retryable error."""


class Workdir(BaseModel):
    workdir: str


@job("conformance.fatal", queue=QUEUE, retry=Retry(attempts=5, initial_delay=0.0))
async def fatal(ctx: JobContext, payload: Workdir) -> None:
    await ctx.step.run("tally", tally, payload.workdir, "fatal")
    raise Rejected("this input can never work")


class Gated(BaseModel):
    workdir: str
    gate: str
    progress: float | None = None
    message: str | None = None


@job("conformance.gated", queue=QUEUE, retry=1)
async def gated(ctx: JobContext, payload: Gated) -> str:
    await ctx.step.run("started", tally, payload.workdir, f"started-{payload.gate}")
    if payload.progress is not None:
        ctx.report_progress(payload.progress, payload.message)
    if not await ctx.step.run("gate", wait_for_gate, payload.workdir, payload.gate):
        raise TimeoutError(f"gate {payload.gate} never opened")
    await ctx.step.run("finished", tally, payload.workdir, f"finished-{payload.gate}")
    return payload.gate


@job("conformance.slow", queue=QUEUE, retry=1, timeout=timedelta(seconds=0.5))
async def slow(ctx: JobContext, payload: Gated) -> str:
    await ctx.step.run("gate", wait_for_gate, payload.workdir, payload.gate)
    await ctx.step.run("finished", tally, payload.workdir, "slow-finished")
    return "too late"


class Sleep(BaseModel):
    workdir: str
    seconds: float = 0.0
    until: datetime | None = None


def note(workdir: str, name: str) -> str:
    tally(workdir, name)
    return name


@job("conformance.sleeper", queue=QUEUE, retry=1)
async def sleeper(ctx: JobContext, payload: Sleep) -> list[str]:
    before = await ctx.step.run("before", note, payload.workdir, "before")
    if payload.until is not None:
        await ctx.step.sleep_until("nap", payload.until)
    else:
        await ctx.step.sleep("nap", timedelta(seconds=payload.seconds))
    after = await ctx.step.run("after", note, payload.workdir, "after")
    return [before, after]


@job("conformance.duplicate_steps", queue=QUEUE, retry=Retry(attempts=3, initial_delay=0.0))
async def duplicate_steps(ctx: JobContext, payload: Workdir) -> None:
    await ctx.step.run("same", note, payload.workdir, "first")
    await ctx.step.run("same", note, payload.workdir, "second")


@job("conformance.no_payload", queue=QUEUE, retry=1)
async def no_payload(ctx: JobContext) -> dict[str, object]:
    return {"job_name": ctx.job_name, "attempt": ctx.attempt}


# The step-rule probes and the operator tools' jobs register with these, so a worker that
# imports this module has all.
from jobkit_dispatch.conformance import portable_jobs, recovery_jobs  # noqa: E402, F401
