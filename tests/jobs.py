"""Jobs shared by the unit tests (the conformance suite has its own)."""

from __future__ import annotations

import os
import threading
from typing import Any

from pydantic import BaseModel

from jobkit_engine import JobContext, job


class Greeting(BaseModel):
    name: str


class Greeted(BaseModel):
    text: str
    thread: str


def blocking_greet(name: str) -> str:
    return f"hello {name}"


@job("tests.greet", retry=1)
async def greet(ctx: JobContext, payload: Greeting) -> Greeted:
    text = await ctx.step.run("greet", blocking_greet, payload.name)
    return Greeted(text=text, thread=threading.current_thread().name)


class Loose(BaseModel):
    data: Any = None


@job("tests.loose", retry=1)
async def loose(ctx: JobContext, payload: Loose) -> Any:
    """Takes any JSON: the dispatcher, not the model, must refuse what is not JSON."""
    return payload.data


class Workdir(BaseModel):
    workdir: str


def tally(workdir: str, step: str) -> str:
    """Count a run of `step` in a file; step "b" fails until the file `fixed` exists."""
    with open(os.path.join(workdir, "tally"), "a") as f:
        f.write(f"{step}\n")
    if step == "b" and not os.path.exists(os.path.join(workdir, "fixed")):
        raise ValueError("upstream said no")
    return step


@job("tests.three_steps", retry=2)
async def three_steps(ctx: JobContext, payload: Workdir) -> str:
    """Steps a, b, c; b fails until it is "fixed", so a retry shows where a job resumes."""
    done = [await ctx.step.run(step, tally, payload.workdir, step) for step in "abc"]
    return "".join(done)
