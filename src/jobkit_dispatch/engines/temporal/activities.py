"""The activities a jobkit worker registers: one that runs any step, one that takes a slot.

`run_step` is a dynamic activity: its type is the step function's `module:qualname`, so
Temporal's UI and history name the function each step ran. It takes one JSON argument,
`{"args": [...], "kwargs": {...}, "max_bytes": n}`, and runs the function as every engine
does (`run_step_function`: arguments turned back into the annotated types, the result
encoded as JSON within the size limit).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from temporalio import activity
from temporalio.common import RawValue

from jobkit.errors import StepError
from jobkit_dispatch.engines.temporal._model import ACQUIRE_SLOT
from jobkit_dispatch.engines.temporal._slots import SlotPool
from jobkit_dispatch.engines.temporal._steps import as_application_error
from jobkit_engine.runtime import DEFAULT_MAX_BYTES, resolve_ref, run_step_function


@activity.defn(dynamic=True)
async def run_step(args: Sequence[RawValue]) -> Any:
    """Run the step function named by this activity's type and return its result as JSON."""
    info = activity.info()
    ref = info.activity_type
    try:
        fn = resolve_ref(ref)
        call = activity.payload_converter().from_payload(args[0].payload, dict) if args else {}
        max_bytes = int(call.pop("max_bytes", DEFAULT_MAX_BYTES))
    except StepError as exc:
        raise as_application_error(exc) from exc
    async with _heartbeating():
        try:
            return await run_step_function(info.activity_id, ref, fn, call, max_bytes)
        except Exception as exc:
            raise as_application_error(exc) from exc


class SlotActivities:
    """The slot activity of one worker, bound to that worker's pool."""

    def __init__(self, pool: SlotPool) -> None:
        self.pool = pool

    @activity.defn(name=ACQUIRE_SLOT)
    async def acquire_slot(self, job_id: str, token: str, lease: float) -> dict[str, Any]:
        """Take a slot for one attempt of `job_id`, or queue it (a local activity)."""
        acquired = self.pool.try_acquire(job_id, token, lease)
        return {"pool": self.pool.key, "acquired": acquired}


@contextlib.asynccontextmanager
async def _heartbeating() -> AsyncIterator[None]:
    """Heartbeat while the step runs, so that a lost worker is noticed within the step's
    heartbeat timeout and a cancellation reaches an async step function.

    A beat is a local call; the worker sends at most one per `HEARTBEAT_THROTTLE` to the
    server, and the cancellation comes back in the reply. The first beat waits one
    interval, so a step that ends sooner costs no heartbeat at all.
    """
    interval = 0.5  # seconds between beats, at most
    timeout = activity.info().heartbeat_timeout
    if timeout:
        interval = min(interval, timeout.total_seconds() / 3)

    async def beat() -> None:
        while True:
            await asyncio.sleep(interval)
            activity.heartbeat()

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
