"""Strict mode: find, with no server, what would break only when a job falls back to Temporal.

A job runs on Temporal exactly when Redis is in trouble, so what Temporal refuses must be
found in the user's own tests. Handler code outside steps is Temporal workflow code, and
strict mode holds it to Temporal's rules on any engine (on by default in the inline
engine's test helpers; `JOBKIT_STRICT=1` on RQ workers in staging):

1. **Calls.** No call Temporal's workflow sandbox refuses — temporalio's own list,
   `SandboxRestrictions.default` (I/O, `open()`, the clock, `random`, `uuid4`, the
   environment, `urllib`/sockets, also when a library makes the call for the handler) —
   and nothing its workflow event loop refuses (`asyncio.to_thread`,
   `loop.run_in_executor`, sockets, threads). Needs temporalio (`jobkit-dispatch[temporal]`).
2. **Determinism.** After every execution the handler runs again against the results its
   steps returned (nothing runs again) and must call the same steps in the same order.
3. **No blocking.** Code outside steps may not run longer than `block_threshold` before
   it waits for a step or a timer: Temporal's deadlock detector allows a workflow task
   2 s, and awaits that stay on the event loop (`asyncio.sleep(0)`) do not end the task.

The tasks the handler starts (`asyncio.gather` of helpers, `create_task`, `TaskGroup`)
are held to the same rules. Code inside `ctx.step.run(...)` may do anything. Each
violation fails the job at once with `StrictModeError`, which names the job, the call or
the steps, and the fix.

An engine turns it on by passing a `StrictMode` to `execute_job(..., strict=...)`.
"""

from __future__ import annotations

import asyncio
import copy
import importlib.util
import warnings
from typing import Any

from jobkit_engine._context import JobContext
from jobkit_engine._definition import JobDefinition
from jobkit_engine.strict._replay import replay
from jobkit_engine.strict._sandbox import CallIndex, call_index
from jobkit_engine.strict._tasks import Driven, watching_tasks
from jobkit_engine.strict._watch import StrictSteps, Watch

#: Temporal's deadlock detector: a workflow task may hold its event loop this long.
TEMPORAL_DEADLOCK_SECONDS = 2.0

_NEEDS_TEMPORALIO = (
    "jobkit strict mode checks the calls made outside steps against Temporal's sandbox "
    "rules, which come with temporalio: pip install 'jobkit-dispatch[temporal]'. Without it, only "
    "the determinism and blocking checks run."
)
_warned = False


class StrictMode:
    """The three checks of strict mode, for an engine to apply to each execution.

    `calls`, `replay` and `block_threshold` (seconds; None turns it off) choose the checks;
    `trusted_modules` names more modules whose code (and what it calls) is not checked,
    as the sandbox trusts the modules it passes through (jobkit's own and pytest's are).
    """

    def __init__(
        self,
        *,
        calls: bool = True,
        replay: bool = True,
        block_threshold: float | None = TEMPORAL_DEADLOCK_SECONDS,
        trusted_modules: tuple[str, ...] = (),
    ) -> None:
        self.calls = calls
        self.replay = replay
        self.block_threshold = float("inf") if block_threshold is None else block_threshold
        self.trusted_modules = trusted_modules
        self._index: CallIndex | None = None
        if calls and importlib.util.find_spec("temporalio") is None:
            _warn_once()
            self.calls = False

    @classmethod
    def from_settings(cls, settings: Any) -> StrictMode | None:
        """A StrictMode when `settings.strict` (`JOBKIT_STRICT`) is on, else None: what a
        worker passes to `execute_job(..., strict=...)`."""
        return cls() if getattr(settings, "strict", False) else None

    def __repr__(self) -> str:
        return (
            f"StrictMode(calls={self.calls}, replay={self.replay}, "
            f"block_threshold={self.block_threshold:g})"
        )

    async def run(self, definition: JobDefinition[Any, Any], ctx: JobContext, payload: Any) -> Any:
        """Run one execution of the handler under the checks; what `execute_job` awaits."""
        index = self._call_index()
        watch = Watch(
            ctx.job_name, definition.handler, index, self.block_threshold, keep_results=self.replay
        )
        # The replay gets the payload as the handler first saw it.
        pristine = _copy(payload) if self.replay else None
        live = JobContext(
            job_id=ctx.job_id,
            job_name=ctx.job_name,
            attempt=ctx.attempt,
            engine=ctx.engine,
            step=StrictSteps(ctx.step, watch),
            progress_sink=lambda p: watch.machinery(ctx.report_progress, p.fraction, p.message),
            logger=ctx.logger,
        )
        ended: BaseException | None = None
        result = None
        watch.owner = asyncio.current_task()
        try:
            with watching_tasks(watch):  # and the tasks the handler starts
                result = await Driven(definition(live, payload), watch, handler=True)
        except asyncio.CancelledError:
            if watch.owner_interrupted and watch.violation is not None and watch.owner:
                watch.owner.uncancel()  # the interruption was ours: the violation ends it
                raise watch.violation from None
            raise
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # a failure, or the long sleep that suspends the job
            ended = exc
        if watch.violation is not None:
            raise watch.violation
        if self.replay:
            record = list(watch.steps)
            await replay(definition, ctx, pristine, record, original_failed=ended is not None)
        if ended is not None:
            raise ended
        return result

    def _call_index(self) -> CallIndex | None:
        if not self.calls:
            return None
        if self._index is None:
            self._index = call_index(self.trusted_modules)
            if self._index is None:
                _warn_once()
                self.calls = False
        return self._index


def _copy(payload: Any) -> Any:
    try:
        return copy.deepcopy(payload)
    except Exception:
        return payload


def _warn_once() -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(_NEEDS_TEMPORALIO, RuntimeWarning, stacklevel=4)


__all__ = ["TEMPORAL_DEADLOCK_SECONDS", "StrictMode"]
