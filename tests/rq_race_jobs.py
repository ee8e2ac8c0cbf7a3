"""The job of the RQ cancel race test: a few short steps, each leaving a trace in files.

Every step appends `<job id> <step> <time>` to `starts` as its first act and
`<job id> <step>` to `effects` as its last, so the test can tell, per job, which steps
started (and when) and which side effects happened, whatever process ran them.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel

from jobkit.queues import QueueSpec, default_queues
from jobkit_engine import JobContext, job

RACE_QUEUE = "rq-race"
default_queues.register(
    QueueSpec(RACE_QUEUE, concurrency=16, default_timeout=timedelta(seconds=60))
)


class Race(BaseModel):
    workdir: str


def _note(workdir: str, name: str, line: str) -> None:
    with open(Path(workdir, name), "a") as f:  # one O_APPEND write per line: atomic
        f.write(line + "\n")


def work(workdir: str, job_id: str, step: str) -> str:
    """A synchronous step (it runs in a thread, where no cancellation reaches it)."""
    _note(workdir, "starts", f"{job_id} {step} {time.time()!r}")
    time.sleep(0.002)
    _note(workdir, "effects", f"{job_id} {step}")
    return step


async def awork(workdir: str, job_id: str, step: str) -> str:
    """An async step: a cancellation interrupts it at its `await`."""
    _note(workdir, "starts", f"{job_id} {step} {time.time()!r}")
    await asyncio.sleep(0.002)
    _note(workdir, "effects", f"{job_id} {step}")
    return step


@job("rqrace.steps", queue=RACE_QUEUE, retry=1)
async def steps(ctx: JobContext, payload: Race) -> list[str]:
    done = []
    for i, fn in enumerate((work, awork, work)):
        done.append(await ctx.step.run(f"s{i}", fn, payload.workdir, ctx.job_id, f"s{i}"))
    return done
