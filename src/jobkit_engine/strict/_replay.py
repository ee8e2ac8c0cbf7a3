"""The determinism check: run the handler again against the step results it just got.

Temporal rebuilds a job after a worker restart by running its handler from the top and
matching each step it asks for against the history; a handler whose step ids or branches
depend on the clock, random numbers, uuids or the environment asks for other steps, and the
job stops with a non-determinism error. Strict mode does that replay after every
execution, in-process: no step function runs, each step returns (a copy of) what it
returned, or raises what it raised; sleeps return at once, and the sleep that ended the
execution ends the replay. The sequence of steps (id and kind) must be the same.

When the handler runs steps concurrently (`asyncio.gather`), their order depends on timing,
so only which steps ran is compared.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jobkit.durations import Duration
from jobkit.errors import StrictModeError
from jobkit_engine._context import JobContext
from jobkit_engine._definition import JobDefinition

DETERMINISM_FIX = (
    "Derive step ids and branches from the payload or from a step's result: read the "
    "clock, random numbers, uuids and the environment inside ctx.step.run(...)"
)

_silent = logging.Logger("jobkit.strict.replay")  # the replay's log lines were logged once
_silent.disabled = True


@dataclass(eq=False)
class StepCall:
    """One step as the execution called it, and how it ended."""

    step_id: str
    kind: str  # "run" | "sleep"
    task: int  # the asyncio task that called it
    value: Any = None
    error: BaseException | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.step_id, self.kind


class _Diverged(BaseException):
    """The replay asked for a step the execution did not call there (a BaseException, so
    that the handler's `except Exception` does not hide it)."""

    def __init__(self, position: int, asked: tuple[str, str] | None) -> None:
        super().__init__(position, asked)
        self.position = position
        self.asked = asked


class ReplaySteps:
    """`ctx.step` for the replay: answers from the record, runs nothing."""

    def __init__(self, record: list[StepCall], ordered: bool) -> None:
        self._record = record
        self._ordered = ordered
        self._by_key = {call.key: call for call in record}
        self.asked: list[tuple[str, str]] = []

    async def run(self, step_id: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return self._take(step_id, "run")

    async def sleep(self, step_id: str, duration: Duration) -> None:
        self._take(step_id, "sleep")

    async def sleep_until(self, step_id: str, when: datetime) -> None:
        self._take(step_id, "sleep")

    def _take(self, step_id: str, kind: str) -> Any:
        position = len(self.asked)
        key = (step_id, kind)
        self.asked.append(key)
        if self._ordered:
            call = self._record[position] if position < len(self._record) else None
            if call is None or call.key != key:
                raise _Diverged(position, key)
        else:
            call = self._by_key.get(key)
            if call is None:
                raise _Diverged(position, key)
        if call.error is not None:
            raise call.error
        return copy.deepcopy(call.value)


async def replay(
    definition: JobDefinition[Any, Any],
    ctx: JobContext,
    payload: Any,
    record: list[StepCall],
    original_failed: bool,
) -> None:
    """Run the handler against `record`; raise `StrictModeError` if it takes another path."""
    ordered = len({call.task for call in record}) <= 1
    steps = ReplaySteps(record, ordered)
    replay_ctx = JobContext(
        job_id=ctx.job_id,
        job_name=ctx.job_name,
        attempt=ctx.attempt,
        engine=ctx.engine,
        step=steps,
        progress_sink=lambda progress: None,
        logger=_silent,
    )
    failed = False
    try:
        await definition(replay_ctx, payload)
    except _Diverged as diverged:
        raise _error(ctx.job_name, record, diverged.position, diverged.asked) from None
    except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # the handler's own failure, or the sleep that suspended it
        failed = True
    if ordered:
        if len(steps.asked) < len(record):
            raise _error(ctx.job_name, record, len(steps.asked), None)
    elif not (failed or original_failed) and Counter(steps.asked) != Counter(
        call.key for call in record
    ):
        missing = Counter(call.key for call in record) - Counter(steps.asked)
        raise _error(ctx.job_name, record, len(steps.asked), None, missing=list(missing))


def _error(
    job_name: str,
    record: list[StepCall],
    position: int,
    asked: tuple[str, str] | None,
    missing: list[tuple[str, str]] | None = None,
) -> StrictModeError:
    ran = ", ".join(_show(call.key) for call in record) or "no steps"
    if asked is None:
        left = missing or [call.key for call in record[position:]]
        what = f"the replay ended without calling {', '.join(_show(k) for k in left)}"
    else:
        expected = record[position].key if position < len(record) else None
        instead = (
            f"where the execution called {_show(expected)}"
            if expected
            else "after the execution's last step"
        )
        what = f"the replay called {_show(asked)} as step {position + 1}, {instead}"
    return StrictModeError(
        job_name,
        f"is not deterministic: replayed against its recorded step results, {what} "
        f"(the execution called: {ran})",
        DETERMINISM_FIX,
    )


def _show(key: tuple[str, str]) -> str:
    step_id, kind = key
    return f"{step_id!r} ({kind})"
