"""The activities a jobkit worker registers: one that runs any step, one that takes a slot.

`run_step` is a dynamic activity: its type is the step function's `module:qualname`, so
Temporal's UI and history name the function each step ran. It takes one JSON argument,
`{"args": [...], "kwargs": {...}}`, and turns each argument back into the type the
function annotates (a pydantic model comes back as the model), as `step.run` results do.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import typing
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from temporalio import activity
from temporalio.common import RawValue

from jobkit.errors import StepError
from jobkit_dispatch.engines.temporal._model import ACQUIRE_SLOT
from jobkit_dispatch.engines.temporal._slots import SlotPool
from jobkit_dispatch.engines.temporal._steps import as_application_error, resolve_ref
from jobkit_engine._codec import adapter_for, to_json
from jobkit_engine._context import _call


@activity.defn(dynamic=True)
async def run_step(args: Sequence[RawValue]) -> Any:
    """Run the step function named by this activity's type and return its result as JSON."""
    ref = activity.info().activity_type
    try:
        fn = resolve_ref(ref)
        call = activity.payload_converter().from_payload(args[0].payload, dict) if args else {}
        positional, keywords = _typed_arguments(fn, call.get("args", []), call.get("kwargs", {}))
    except StepError as exc:
        raise as_application_error(exc) from exc
    async with _heartbeating():
        try:
            value = await _call(fn, tuple(positional), keywords)
        except Exception as exc:
            raise as_application_error(exc) from exc
    try:
        return to_json(value)
    except TypeError as exc:
        error = StepError(f"step function {ref} returned a value that is not JSON: {exc}")
        raise as_application_error(error) from None


class SlotActivities:
    """The slot activity of one worker, bound to that worker's pool."""

    def __init__(self, pool: SlotPool) -> None:
        self.pool = pool

    @activity.defn(name=ACQUIRE_SLOT)
    async def acquire_slot(self, job_id: str, token: str, lease: float) -> dict[str, Any]:
        """Take a slot for one attempt of `job_id`, or queue it (a local activity)."""
        acquired = self.pool.try_acquire(job_id, token, lease)
        return {"pool": self.pool.key, "acquired": acquired}


def _typed_arguments(
    fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]
) -> tuple[list[Any], dict[str, Any]]:
    """JSON arguments → the types `fn` annotates; an argument that does not fit stays JSON,
    as the function would have received it from any other JSON-based engine."""
    try:
        signature = inspect.signature(fn)
        hints = typing.get_type_hints(fn)
    except (TypeError, ValueError, NameError):  # builtins, unresolvable annotations
        return args, kwargs
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise StepError(
            f"step function {fn.__qualname__} cannot take these arguments: {exc}"
        ) from None
    for name, value in bound.arguments.items():
        hint = hints.get(name)
        kind = signature.parameters[name].kind
        if hint is None or hint is Any or kind in (kind.VAR_POSITIONAL, kind.VAR_KEYWORD):
            continue
        with contextlib.suppress(Exception):
            bound.arguments[name] = adapter_for(hint).validate_python(value)
    return list(bound.args), dict(bound.kwargs)


@contextlib.asynccontextmanager
async def _heartbeating() -> AsyncIterator[None]:
    """Heartbeat while the step runs, so that a lost worker is noticed within the step's
    heartbeat timeout and a cancellation reaches an async step function."""
    timeout = activity.info().heartbeat_timeout
    if not timeout:
        yield
        return

    async def beat() -> None:
        while True:
            activity.heartbeat()
            await asyncio.sleep(timeout.total_seconds() / 3)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
