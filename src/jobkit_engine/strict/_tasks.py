"""The job's own code on the event loop: the handler, and every task it starts.

On Temporal all of it is workflow code — a branch of `asyncio.gather`, a task from
`asyncio.create_task` or a `TaskGroup` runs in the workflow's sandbox like the handler.
`Driven` wraps each one's coroutine and tells the `Watch` when that code runs: one segment
per resumption outside a step. The handler is wrapped by `StrictMode.run`; the tasks it
starts, by a task factory installed on the loop while strict executions run there
(`watching_tasks`, chained to the loop's own factory). Whose task it is comes from a
`ContextVar` the execution sets, which a task inherits from the code that starts it: tasks
of other jobs on the loop, and tasks started inside a step or by jobkit's machinery
(`_in_step`), are left alone.

How a wait ends decides whether the next segment begins a new activation (a workflow task
on Temporal) or continues the current one. An approximation of Temporal's rule — the
activation runs until nothing in the workflow is ready to run:
- a step's end (`Watch.exit_step`) and the handler's start begin one;
- so does the end of `asyncio.sleep(d)` with `d > 0` (a timer on Temporal), and a
  cancellation;
- any other await continues it: `asyncio.sleep(0)`, and a future the job's own code
  resolves (a gather of branches, an `asyncio.Event`, a queue), as on Temporal only steps,
  timers and cancellation come from outside. A wait that `asyncio.wait_for` ends at its
  timeout is not recognised as a timer (`asyncio.timeout` cancels: that is), and a step
  ending while another branch computes begins a new activation at once, where Temporal
  would deliver it after that branch waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Generator, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from jobkit_engine.strict._watch import Watch, _in_step

_watching: ContextVar[Watch | None] = ContextVar("jobkit_strict_watch", default=None)
_SLEEP = asyncio.sleep.__code__


class Driven:
    """Drives one coroutine of the job, one segment per resumption outside a step."""

    __slots__ = ("_after", "_coro", "_end", "_fresh", "_handler", "_watch")

    def __init__(self, coro: Any, watch: Watch, *, handler: bool) -> None:
        self._coro = coro
        self._watch = watch
        self._after = "the handler's start" if handler else "a task's start"
        self._end = "the handler's end" if handler else "the task's end"
        self._fresh = handler
        self._handler = handler

    def __await__(self) -> Generator[Any, None, Any]:
        return self  # type: ignore[return-value]

    def __iter__(self) -> Driven:
        return self

    def __next__(self) -> Any:
        return self._resume(self._coro.send, None)

    def send(self, value: Any) -> Any:
        return self._resume(self._coro.send, value)

    def throw(self, *exc: Any) -> Any:
        if isinstance(exc[0], asyncio.CancelledError) or exc[0] is asyncio.CancelledError:
            self._fresh, self._after = True, "a cancellation"  # from outside, as on Temporal
        return self._resume(self._coro.throw, *exc)

    def close(self) -> None:
        self._coro.close()

    # What asyncio shows of a task (its repr, get_stack) is the job's own coroutine.
    @property
    def cr_frame(self) -> Any:
        return getattr(self._coro, "cr_frame", None)

    @property
    def cr_await(self) -> Any:
        return getattr(self._coro, "cr_await", None)

    @property
    def cr_code(self) -> Any:
        return getattr(self._coro, "cr_code", None)

    @property
    def __name__(self) -> str:
        return str(getattr(self._coro, "__qualname__", type(self._coro).__name__))

    def __getattr__(self, name: str) -> Any:
        # Anything else a task factory or a debugger reads of a coroutine (`__qualname__`,
        # `cr_running`, ...) is the job's coroutine's.
        if name == "_coro":
            raise AttributeError(name)
        return getattr(self._coro, name)

    def _resume(self, method: Callable[..., Any], *args: Any) -> Any:
        watch = self._watch
        if not watch.live or watch.in_segment:  # over, or started eagerly inside a segment
            return method(*args)
        earlier = watch.violation
        if not _in_step.get():
            watch.open_segment(self._after, fresh=self._fresh)
        yielded = False
        try:
            result = method(*args)
            yielded = True
            self._fresh = result is not None and _waits_for_a_timer(self._coro)
            self._after = "a timer" if self._fresh else "an await"
            return result
        finally:
            # Ends this segment, or the one a step's end opened during this resumption.
            watch.close_segment("an await" if yielded else self._end)
            if earlier is None and watch.violation is not None:
                if yielded:  # the code went on (it caught the error): stop it there
                    self._coro.close()
                if not self._handler:
                    watch.interrupt_owner()
                raise watch.violation


def _waits_for_a_timer(coro: Any) -> bool:
    """Whether the innermost coroutine `coro` awaits is `asyncio.sleep` (with a delay: a
    zero delay yields nothing)."""
    innermost = None
    while coro is not None:
        code = getattr(coro, "cr_code", None)
        if code is not None:
            innermost = code
            coro = coro.cr_await
        else:
            coro = getattr(coro, "gi_yieldfrom", None)
    return innermost is _SLEEP


class _TaskFactory:
    """Wraps the coroutine of each task the job's code starts; installed on one loop."""

    def __init__(self, previous: Callable[..., asyncio.Task[Any]] | None) -> None:
        self.previous = previous
        self.executions = 0

    def __call__(
        self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any
    ) -> asyncio.Task[Any]:
        watch = _watching.get()
        if watch is None or not watch.live or _in_step.get() or isinstance(coro, Driven):
            return self._make(loop, coro, kwargs)
        driven = Driven(coro, watch, handler=False)
        # The loop's own factory is the application's machinery, not the job's code.
        task: asyncio.Task[Any] = watch.unchecked(self._make, loop, driven, kwargs)
        return task

    def _make(
        self, loop: asyncio.AbstractEventLoop, coro: Any, kwargs: dict[str, Any]
    ) -> asyncio.Task[Any]:
        if self.previous is None:
            return asyncio.Task(coro, loop=loop, **kwargs)
        return self.previous(loop, coro, **kwargs)


_factories: dict[asyncio.AbstractEventLoop, _TaskFactory] = {}


@contextmanager
def watching_tasks(watch: Watch) -> Iterator[None]:
    """While the execution runs: the tasks its code starts are watched by `watch`."""
    loop = asyncio.get_running_loop()
    factory = _factories.get(loop)
    if factory is None:
        factory = _factories[loop] = _TaskFactory(loop.get_task_factory())
        loop.set_task_factory(factory)
    factory.executions += 1
    token = _watching.set(watch)
    try:
        yield
    finally:
        _watching.reset(token)
        watch.finish()
        factory.executions -= 1
        if factory.executions == 0:
            del _factories[loop]
            if loop.get_task_factory() is factory:  # else someone chained theirs to it
                loop.set_task_factory(factory.previous)
