"""A job and schedules for the cron tests.

The job tallies one line per execution under `<schedule>-<fire epoch>`, so a test can see
each fire time's side effect. The schedules (one per catch-up policy, every second)
register only when `CRON_TEST_WORKDIR` is set, as in the `jobkit cron` processes
the tests start.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel

from jobkit.queues import QueueSpec, default_queues
from jobkit_dispatch.conformance._files import tally
from jobkit_dispatch.cron import CATCH_UP_POLICIES, schedule
from jobkit_engine import JobContext, job

default_queues.register(QueueSpec("cron-test", concurrency=8, default_timeout=timedelta(60)))


class Fire(BaseModel):
    workdir: str
    schedule: str
    fire_time: datetime


def tally_name(schedule_name: str, fire_time: datetime) -> str:
    return f"{schedule_name}-{int(fire_time.timestamp())}"


@job("crontest.fire", queue="cron-test", retry=3)
async def record_fire(ctx: JobContext, payload: Fire) -> None:
    name = tally_name(payload.schedule, payload.fire_time)
    await ctx.step.run("tally", tally, payload.workdir, name)


def fire_payload(schedule_name: str, workdir: str) -> Callable[[datetime], dict[str, Any]]:
    """A payload that names its fire time, so the job knows which fire it is."""

    def payload(fire_time: datetime) -> dict[str, Any]:
        return {"workdir": workdir, "schedule": schedule_name, "fire_time": fire_time}

    return payload


WORKDIR = os.environ.get("CRON_TEST_WORKDIR")
if WORKDIR:
    for _policy in CATCH_UP_POLICIES:
        _name = f"every-second-{_policy}"
        schedule(
            _name,
            every=1,
            job=record_fire,
            payload=fire_payload(_name, WORKDIR),
            catch_up=_policy,  # type: ignore[arg-type]
        )
