"""One execution of a job under strict mode: the call check and the block watchdog.

The job's code runs in *segments*: each time the event loop resumes the handler, or a task
it started (`_tasks`), outside a step, a segment begins — a profile hook
(`sys.setprofile`, this thread only) checks every call against `CallIndex`, and a clock
runs. The segment ends when that code yields back to the loop or enters a step
(`StrictSteps`), and the hook comes off. Inside a step nothing is checked: a step is where
I/O, clocks and blocking calls belong.

The watchdog adds up segments as Temporal's deadlock detector adds up a workflow task
(an *activation*): from a step's end, a timer's end or the handler's start, until the job's
code waits for a step or a timer again. Awaits in between that stay on the event loop
(`asyncio.sleep(0)`, a future another branch of the job resolves) do not end it. More than
the threshold in one activation is a block.

The hook slows the code it watches several times over, which the watchdog must not count:
in each activation it watches the first `CALL_CHECK_SAMPLE` seconds only, so a long
computation is timed at its own speed (give or take that sample) and a refused call made
after it goes unseen until the next step or timer.

Which code is inside a step is a `ContextVar`, so each asyncio task — each job on a shared
loop, each branch of an `asyncio.gather` — is told apart; the hook is installed only while
this job's own code runs, so other jobs on the loop pay nothing.
"""

from __future__ import annotations

import asyncio
import copy
import os
import sys
import time
import types
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from datetime import datetime
from typing import Any

from jobkit.durations import Duration
from jobkit.errors import StrictModeError
from jobkit_engine.strict._replay import StepCall
from jobkit_engine.strict._sandbox import CallIndex, Refusal

_in_step: ContextVar[bool] = ContextVar("jobkit_strict_in_step", default=False)

MOVE_INTO_STEP = "Move this into ctx.step.run(...) (or pass the value in the payload)"
_LOOP_FIX = (
    "Move this into ctx.step.run(...): a plain function step already runs in a thread, "
    "and an async step may use sockets"
)
_BLOCK_FIX = (
    "Move the blocking or CPU-bound work into ctx.step.run(...): Temporal fails a workflow "
    "task whose code runs 2 s before it waits for a step or a timer (its deadlock "
    "detector; `await asyncio.sleep(0)` does not end the task), and on RQ it stalls the "
    "worker's other jobs"
)


#: Seconds the call check watches in each activation before it stops (see the docstring).
CALL_CHECK_SAMPLE = 0.05
_CHECK_CLOCK_EVERY = 64  # calls the hook sees between two looks at the clock


class Watch:
    """What strict mode sees of one execution: the steps it called and the first violation."""

    def __init__(
        self,
        job_name: str,
        handler: Callable[..., Any],
        index: CallIndex | None,
        threshold: float,
        *,
        keep_results: bool = True,
    ) -> None:
        self.job_name = job_name
        self.keep_results = keep_results  # for the replay
        self.live = True  # until the execution ends: tasks it left behind are not watched
        self.violation: StrictModeError | None = None
        # The task awaiting the handler: a violation in a task the handler started
        # interrupts it, or it could wait for that task until the attempt times out.
        self.owner: asyncio.Task[Any] | None = None
        self.owner_interrupted = False
        self.steps: list[StepCall] = []
        self._handler_code = getattr(handler, "__code__", None)
        self._index = index
        self._threshold = threshold
        self._started: float | None = None  # perf_counter() when the open segment began
        self._activation = 0.0  # seconds of segments in the current activation
        self._since = ""  # where the current activation began, for the watchdog's message
        self._segments = 0  # in the current activation
        self._hook_left = CALL_CHECK_SAMPLE  # seconds the hook may still run in it
        self._hook_until = 0.0  # thread_time() when the hook stops, in this segment
        self._hooked_at = 0.0
        self._countdown = _CHECK_CLOCK_EVERY
        self._hooked = False
        self._hook_fn = self._hook  # one bound method, so that `is` finds it installed
        if index is not None:
            index.add_loop(type(asyncio.get_running_loop()))

    # -- segments ------------------------------------------------------------------------

    @property
    def in_segment(self) -> bool:
        return self._started is not None

    def open_segment(self, after: str, *, fresh: bool) -> None:
        """Code outside a step resumes after `after`; `fresh` when that was a step's end,
        a timer's end or the handler's start, which begin a new activation."""
        if self._started is not None or not self.live:
            return
        if fresh:
            self._activation, self._since, self._segments = 0.0, after, 0
            self._hook_left = CALL_CHECK_SAMPLE
        index = self._index
        if index is not None and self.violation is None and self._hook_left > 0:
            index.refresh()
            if sys.getprofile() is None:  # never displace a profiler someone runs
                # Thread time, so that a loaded machine (this thread descheduled) does not
                # use the sample up: whether a call is seen must not depend on the load.
                self._hooked_at = time.thread_time()
                self._hook_until = self._hooked_at + self._hook_left
                self._countdown = _CHECK_CLOCK_EVERY
                sys.setprofile(self._hook_fn)
                self._hooked = True
        self._started = time.perf_counter()

    def close_segment(self, before: str) -> None:
        started = self._started
        if started is None:
            return
        elapsed = time.perf_counter() - started
        self._started = None
        self._unhook()
        self._activation += elapsed
        self._segments += 1
        if self._activation > self._threshold and self.violation is None:
            through = (
                "; the awaits in between did not wait for a step or a timer"
                if self._segments > 1
                else ""
            )
            self.violation = StrictModeError(
                self.job_name,
                f"ran {self._activation:.2f} s outside a step without waiting for a step or "
                f"a timer (between {self._since} and {before}{through}), over the "
                f"{self._threshold:g} s limit",
                _BLOCK_FIX,
            )

    def interrupt_owner(self) -> None:
        """A task the handler started broke a rule: end the handler too."""
        owner = self.owner
        if owner is not None and owner is not asyncio.current_task() and not owner.done():
            self.owner_interrupted = True
            owner.cancel()

    def finish(self) -> None:
        """The execution is over: what its tasks still run is not watched."""
        self._started = None
        self._unhook()
        self.live = False

    def _unhook(self) -> None:
        if self._hooked:
            self._hooked = False
            self._hook_left -= time.thread_time() - self._hooked_at
            if sys.getprofile() is self._hook_fn:
                sys.setprofile(None)

    def machinery(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call jobkit's own machinery (progress, logging) with the call check paused; a
        task it starts (a progress write) is the engine's, not watched."""
        token = _in_step.set(True)
        try:
            return self.unchecked(fn, *args)
        finally:
            _in_step.reset(token)

    def unchecked(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call `fn` with the call check paused."""
        hooked = self._hooked
        if hooked:
            sys.setprofile(None)
        try:
            return fn(*args)
        finally:
            if hooked and self._hooked:
                sys.setprofile(self._hook_fn)

    # -- steps ---------------------------------------------------------------------------

    def enter_step(self, step_id: str, kind: str) -> tuple[StepCall, bool]:
        """A step begins: no step starts after a violation; the open segment ends here."""
        if self.violation is not None:
            raise self.violation
        paused = self._started is not None
        if paused:
            self.close_segment(f"step {step_id!r}")
            if self.violation is not None:
                raise self.violation
        task = asyncio.current_task()
        call = StepCall(step_id, kind, 0 if task is None else id(task))
        self.steps.append(call)
        return call, paused

    def exit_step(self, call: StepCall, paused: bool) -> None:
        if paused:  # a step's result comes in a new activation on Temporal
            self.open_segment(f"step {call.step_id!r}", fresh=True)

    # -- the call check ------------------------------------------------------------------

    def _hook(self, frame: types.FrameType, event: str, arg: Any) -> None:
        if event != "call" and event != "c_call":  # returns: nothing to check
            return
        self._countdown -= 1
        if not self._countdown and self._sampled():
            return
        index = self._index
        assert index is not None
        if event == "c_call":
            checked = index.checked(frame)
            refusal = index.c_refusal(arg) if checked else index.c_loop_refusal(arg)
            if refusal is not None:
                self._refuse(refusal, frame)
        else:
            refusals = index.codes.get(frame.f_code)
            if refusals is not None:
                self._check_call(refusals, frame)

    def _sampled(self) -> bool:
        """Whether the hook has watched long enough in this activation: then it stops."""
        self._countdown = _CHECK_CLOCK_EVERY
        if time.thread_time() < self._hook_until:
            return False
        self._unhook()
        return True

    def _check_call(self, refusals: tuple[Refusal, ...], frame: types.FrameType) -> None:
        caller = frame.f_back
        assert self._index is not None
        for refusal in refusals:
            if not refusal.any_caller and (caller is None or not self._index.checked(caller)):
                continue
            if refusal.applies(frame):
                self._refuse(refusal, caller or frame)

    def _refuse(self, refusal: Refusal, site: types.FrameType) -> None:
        where = self._where(site)
        if where is None:  # run by an import or a finaliser, not by the job
            return
        call = _shown(refusal.name)
        if refusal.by == "loop":
            problem = (
                f"called {call} outside a step ({where}); Temporal's workflow event loop "
                "refuses it: no threads, executors or sockets in workflow code"
            )
            fix = _LOOP_FIX
        else:
            problem = (
                f"called {call} outside a step ({where}); Temporal's workflow sandbox "
                "refuses it: code outside steps must be deterministic and do no I/O (no "
                "files, network, clock, random numbers, environment or threads)"
            )
            fix = MOVE_INTO_STEP
        error = StrictModeError(self.job_name, problem, fix)
        if self.violation is None:
            self.violation = error
        self._hooked = False  # raising from the hook removes it
        raise error

    def _where(self, site: types.FrameType) -> str | None:
        """`at jobs.py:12 in handler, through httpx.get`, or None for an import/finaliser."""
        chain: list[types.FrameType] = []
        frame: types.FrameType | None = site
        while frame is not None and frame.f_code is not self._handler_code:
            if frame.f_code.co_name == "__del__" or _importing(frame):
                return None
            chain.append(frame)
            frame = frame.f_back
        if frame is None:  # not below the handler (a callback): name the site itself
            return f"at {_location(site)}"
        where = f"at {_location(frame)}"
        if chain:
            where += f", through {_qualname(chain[-1])}"
            if chain[0] is not chain[-1]:
                where += f" and {_qualname(chain[0])}"
        return where


class StrictSteps:
    """`ctx.step` under strict mode: records every step for the replay, and marks the
    code inside a step, which may do what the handler may not."""

    def __init__(self, inner: Any, watch: Watch) -> None:
        self._inner = inner
        self._watch = watch

    async def run(self, step_id: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await self._step(
            step_id, "run", lambda: self._inner.run(step_id, fn, *args, **kwargs)
        )

    async def sleep(self, step_id: str, duration: Duration) -> None:
        await self._step(step_id, "sleep", lambda: self._inner.sleep(step_id, duration))

    async def sleep_until(self, step_id: str, when: datetime) -> None:
        await self._step(step_id, "sleep", lambda: self._inner.sleep_until(step_id, when))

    async def _step(self, step_id: str, kind: str, start: Callable[[], Awaitable[Any]]) -> Any:
        call, paused = self._watch.enter_step(step_id, kind)
        token = _in_step.set(True)
        try:
            value = await start()
        except BaseException as exc:
            call.error = exc
            raise
        finally:
            _in_step.reset(token)
            self._watch.exit_step(call, paused)
        if self._watch.keep_results:
            call.value = _snapshot(value)
        return value


def _snapshot(value: Any) -> Any:
    """What the replay hands back: a copy, since the handler may change what it got."""
    try:
        return copy.deepcopy(value)
    except Exception:
        return value


def _importing(frame: types.FrameType) -> bool:
    """A module's top level, run by the import system (not a script's `__main__`)."""
    caller = frame.f_back
    return (
        frame.f_code.co_name == "<module>"
        and caller is not None
        and caller.f_code.co_filename.startswith("<frozen importlib")
    )


def _shown(name: str) -> str:
    """`__builtins__.open` → `open()`, `threading.Thread.__init__` → `threading.Thread()`."""
    name = name.removeprefix("__builtins__.")
    for constructor in (".__init__", ".__new__"):
        name = name.removesuffix(constructor)
    return f"{name}()"


def _qualname(frame: types.FrameType) -> str:
    module = frame.f_globals.get("__name__") or "?"
    return f"{module}.{frame.f_code.co_qualname}"


def _location(frame: types.FrameType) -> str:
    path = frame.f_code.co_filename
    try:
        relative = os.path.relpath(path)
    except ValueError:
        relative = path
    if not relative.startswith(".."):
        path = relative
    return f"{path}:{frame.f_lineno} in {frame.f_code.co_qualname}"
