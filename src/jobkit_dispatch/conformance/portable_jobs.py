"""Jobs that probe the step rules: each breaks one rule, or shows one encoding, so the
suite can assert that every engine answers the same way. Imported by `jobs`, so a worker
that imports the conformance jobs has these too."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from croniter import CroniterBadCronError
from pydantic import BaseModel

from jobkit_dispatch.conformance._files import tally, wait_for_gate
from jobkit_engine import JobContext, Retry, job

QUEUE = "conformance"
RETRY = Retry(attempts=3, initial_delay=0.0)
BIG = 1_100_000  # characters: over the default limit of 1 MiB of JSON


class Probe(BaseModel):
    workdir: str
    kind: str = ""


def record(workdir: str, name: str) -> str:
    tally(workdir, name)
    return name


class _Holder:
    def record(self, workdir: str, name: str) -> str:
        return record(workdir, name)


def _closure_for(workdir: str) -> Any:
    def closure() -> str:
        return record(workdir, "closure")

    return closure


def _bad_step(kind: str, workdir: str) -> tuple[Any, tuple[Any, ...]]:
    """A step function no worker can find by an import path, and its arguments."""
    return {
        "lambda": (lambda: record(workdir, "lambda"), ()),
        "closure": (_closure_for(workdir), ()),
        "partial": (functools.partial(record, workdir, "partial"), ()),
        "bound-method": (_Holder().record, (workdir, "bound-method")),
        "stdlib": (json.dumps, ({"a": 1},)),
    }[kind]


@job("conformance.bad_step_function", queue=QUEUE, retry=RETRY)
async def bad_step_function(ctx: JobContext, payload: Probe) -> str:
    fn, args = _bad_step(payload.kind, payload.workdir)
    return await ctx.step.run("bad", fn, *args)


@job("conformance.non_json_argument", queue=QUEUE, retry=RETRY)
async def non_json_argument(ctx: JobContext, payload: Probe) -> str:
    return await ctx.step.run("bad", record, payload.workdir, _Holder())


class Point(BaseModel):
    x: int
    y: int


def describe(untyped, point: Point, when: datetime) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Which types the arguments arrive as: JSON where there is no annotation."""
    return {
        "untyped": type(untyped).__name__,
        "point": type(point).__name__,
        "when": type(when).__name__,
    }


@job("conformance.argument_types", queue=QUEUE, retry=1)
async def argument_types(ctx: JobContext, payload: Probe) -> dict[str, str]:
    p = Point(x=1, y=2)
    return await ctx.step.run("describe", describe, p, p, datetime(2030, 1, 1).astimezone())


def big_text(workdir: str) -> str:
    tally(workdir, "big-text")
    return "x" * BIG


def undecodable(workdir: str) -> str:
    tally(workdir, "undecodable")
    return b"caf\xe9".decode("utf-8", "surrogateescape")  # a lone surrogate: no UTF-8


@job("conformance.oversized", queue=QUEUE, retry=RETRY)
async def oversized(ctx: JobContext, payload: Probe) -> str:
    """`kind`: step-result, step-arguments or job-result — one of them over the limit."""
    if payload.kind == "step-result":
        await ctx.step.run("big", big_text, payload.workdir)
    elif payload.kind == "step-arguments":
        await ctx.step.run("big", record, payload.workdir, "x" * BIG)
    return "x" * BIG


@job("conformance.unencodable", queue=QUEUE, retry=RETRY)
async def unencodable(ctx: JobContext, payload: Probe) -> str:
    return await ctx.step.run("odd", undecodable, payload.workdir)


class PortableError(Exception):
    """An application error with attributes, some JSON and one not."""

    def __init__(self, message: str, code: int, detail: dict[str, Any]) -> None:
        super().__init__(message)
        self.code = code
        self.detail = detail
        self.lock = asyncio.Lock()  # not JSON: dropped on every engine


def raise_portable(workdir: str) -> None:
    tally(workdir, "raise-portable")
    raise PortableError("quota exceeded", 429, {"retry_after": 30})


def raise_library_error(workdir: str) -> None:
    tally(workdir, "raise-library")
    raise CroniterBadCronError("not a cron expression")


@job("conformance.step_exceptions", queue=QUEUE, retry=1)
async def step_exceptions(ctx: JobContext, payload: Probe) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    try:
        await ctx.step.run("portable", raise_portable, payload.workdir)
    except PortableError as exc:
        seen["portable"] = {
            "message": str(exc),
            "code": exc.code,
            "detail": exc.detail,
            "lock": hasattr(exc, "lock"),
        }
    try:
        await ctx.step.run("library", raise_library_error, payload.workdir)
    except CroniterBadCronError as exc:
        seen["library"] = {"message": str(exc), "class": type(exc).__qualname__}
    return seen


async def wait_then_record(workdir: str, gate: str) -> str:
    """An async step that outlives a cancel unless the cancel interrupts it."""
    tally(workdir, f"waiting-{gate}")
    await wait_for_gate(workdir, gate)
    tally(workdir, f"after-gate-{gate}")
    return gate


@job("conformance.stubborn", queue=QUEUE, retry=1)
async def stubborn(ctx: JobContext, payload: Probe) -> str:
    """Swallows its cancellation and tries to go on: it must still end cancelled, and its
    next step must not start."""
    gate = payload.kind
    with contextlib.suppress(asyncio.CancelledError):
        await ctx.step.run("wait", wait_then_record, payload.workdir, gate)
    await ctx.step.run("after", record, payload.workdir, f"stubborn-after-{gate}")
    return "finished anyway"


# -- code outside steps that Temporal refuses: every strict engine fails it -----------------


@job("conformance.refused_call", queue=QUEUE, retry=1)
async def refused_call(ctx: JobContext, payload: Probe) -> str:
    """Reads a file outside a step: Temporal's sandbox refuses `open()` there."""
    with open(Path(payload.workdir, "input.txt"), "w") as notes:  # noqa: ASYNC230
        notes.write("outside a step")
    return await ctx.step.run("after", record, payload.workdir, "after-refused-call")


@job("conformance.blocks", queue=QUEUE, retry=1)
async def blocks(ctx: JobContext, payload: Probe) -> str:
    """Holds the event loop for 2.5 s outside a step: past Temporal's deadlock threshold."""
    time.sleep(2.5)  # noqa: ASYNC251
    return await ctx.step.run("after", record, payload.workdir, "after-block")
