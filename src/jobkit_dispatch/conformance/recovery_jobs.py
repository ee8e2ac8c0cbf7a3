"""Jobs for the operator capabilities' tests: a job that fails in its second step, and one
whose middle step fails until the test "fixes" it. Imported by `jobs`, so a worker that
imports the conformance jobs has these too."""

from __future__ import annotations

from pydantic import BaseModel

from jobkit_dispatch.conformance._files import gate_is_open, tally
from jobkit_engine import JobContext, Retry, job

QUEUE = "conformance"
FIX = "fix"  # the gate whose file is the fix of `conformance.fixable`


class Workdir(BaseModel):
    workdir: str


class SecondStepBroke(Exception):
    """What the second step of `conformance.broken_step` raises."""


def first_step(workdir: str) -> str:
    tally(workdir, "broken-first")
    return "first done"


def second_step(workdir: str) -> str:
    tally(workdir, "broken-second")
    raise SecondStepBroke("the second step is broken")


#: The line the suite looks for in the failed step's traceback.
RAISE_LINE = 'raise SecondStepBroke("the second step is broken")'


@job("conformance.broken_step", queue=QUEUE, retry=Retry(attempts=2, initial_delay=0.0))
async def broken_step(ctx: JobContext, payload: Workdir) -> None:
    await ctx.step.run("first", first_step, payload.workdir)
    await ctx.step.run("second", second_step, payload.workdir)


def step_a(workdir: str) -> str:
    tally(workdir, "fixable-a")
    return "a"


def step_b(workdir: str) -> str:
    tally(workdir, "fixable-b")
    if not gate_is_open(workdir, FIX):
        raise ConnectionError("step b fails until it is fixed")
    return "b"


def step_c(workdir: str) -> str:
    tally(workdir, "fixable-c")
    return "c"


@job("conformance.fixable", queue=QUEUE, retry=1)
async def fixable(ctx: JobContext, payload: Workdir) -> dict[str, object]:
    a = await ctx.step.run("a", step_a, payload.workdir)
    b = await ctx.step.run("b", step_b, payload.workdir)
    c = await ctx.step.run("c", step_c, payload.workdir)
    return {"steps": a + b + c, "attempt": ctx.attempt}
