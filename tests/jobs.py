"""Jobs shared by the unit tests (the conformance suite has its own)."""

from __future__ import annotations

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
