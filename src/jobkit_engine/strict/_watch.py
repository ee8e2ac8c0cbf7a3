"""One execution of a job under strict mode: the call check and the block watchdog.

The handler's coroutine is driven by `Driven`: each time the event loop resumes it
outside a step, a *segment* begins — a profile hook (`sys.setprofile`, this thread only)
checks every call against `CallIndex`, and a clock runs. The segment ends when the handler
yields back to the loop or enters a step (`StrictSteps`): the hook comes off, and a
segment longer than the threshold is a block Temporal's deadlock detector would fail.
Inside a step nothing is checked: a step is where I/O, clocks and blocking calls belong.

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
from collections.abc import Awaitable, Callable, Generator
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
    "task that holds its event loop for 2 s (its deadlock detector), and on RQ it stalls "
    "the worker's other jobs"
)


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
        self.violation: StrictModeError | None = None
        self.steps: list[StepCall] = []
        self._handler_code = getattr(handler, "__code__", None)
        self._index = index
        self._threshold = threshold
        self._started: float | None = None  # perf_counter() when the open segment began
        self._after = ""  # where the open segment began, for the watchdog's message
        self._hooked = False
        self._hook_fn = self._hook  # one bound method, so that `is` finds it installed
        if index is not None:
            index.add_loop(type(asyncio.get_running_loop()))

    # -- segments ------------------------------------------------------------------------

    def open_segment(self, after: str | None = None) -> None:
        if self._started is not None:
            return
        if after is not None:
            self._after = after
        index = self._index
        if index is not None and self.violation is None:
            index.refresh()
            if sys.getprofile() is None:  # never displace a profiler someone runs
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
        if elapsed > self._threshold and self.violation is None:
            self.violation = StrictModeError(
                self.job_name,
                f"ran {elapsed:.2f} s outside a step without yielding to the event loop "
                f"(between {self._after} and {before}), over the {self._threshold:g} s limit",
                _BLOCK_FIX,
            )

    def _unhook(self) -> None:
        if self._hooked:
            self._hooked = False
            if sys.getprofile() is self._hook_fn:
                sys.setprofile(None)

    def machinery(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call jobkit's own machinery (progress, logging) with the call check paused."""
        if not self._hooked:
            return fn(*args)
        sys.setprofile(None)
        try:
            return fn(*args)
        finally:
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
        if paused:
            self.open_segment(f"step {call.step_id!r}")

    # -- the call check ------------------------------------------------------------------

    def _hook(self, frame: types.FrameType, event: str, arg: Any) -> None:
        index = self._index
        if event == "c_call":
            assert index is not None
            checked = index.checked(frame)
            refusal = index.c_refusal(arg) if checked else index.c_loop_refusal(arg)
            if refusal is not None:
                self._refuse(refusal, frame)
        elif event == "call":
            assert index is not None
            refusals = index.codes.get(frame.f_code)
            if refusals is not None:
                self._check_call(refusals, frame)

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


class Driven:
    """Drives the handler's coroutine, one segment per resumption outside a step."""

    __slots__ = ("_coro", "_resumed", "_watch")

    def __init__(self, coro: Awaitable[Any], watch: Watch) -> None:
        self._coro: Any = coro
        self._watch = watch
        self._resumed = False

    def __await__(self) -> Generator[Any, None, Any]:
        return self  # type: ignore[return-value]

    def __next__(self) -> Any:
        return self._resume(self._coro.send, None)

    def send(self, value: Any) -> Any:
        return self._resume(self._coro.send, value)

    def throw(self, *exc: Any) -> Any:
        return self._resume(self._coro.throw, *exc)

    def close(self) -> None:
        self._coro.close()

    def _resume(self, method: Callable[..., Any], *args: Any) -> Any:
        watch = self._watch
        earlier = watch.violation
        if not _in_step.get():
            watch.open_segment("an await" if self._resumed else "the handler's start")
        self._resumed = True
        yielded = False
        try:
            result = method(*args)
            yielded = True
            return result
        finally:
            watch.close_segment("an await" if yielded else "the handler's end")
            if earlier is None and watch.violation is not None:
                if yielded:  # the handler went on (it caught the error): stop it there
                    self._coro.close()
                raise watch.violation


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
