"""The block watchdog: a job whose handler blocks its workflow thread fails, visibly.

temporalio runs each workflow activation in a thread of the worker's
`workflow_task_executor` and, when one has not yielded after 2 s, fails the workflow
*task* ("TMPRL1101 potential deadlock") and evicts the workflow. Temporal retries the
task, the handler (replayed) blocks again, and the job would stay `running` forever.
Handler code outside steps that sleeps, does I/O or computes for seconds is the cause.

`ActivationWatchdog` is that executor. It sees temporalio's verdict in the eviction that
follows (its message quotes TMPRL1101) and times each activation itself. A job is
terminated, with a `WorkflowBlockedError` in the termination's details
(`TERMINATION_KEY`) that `get_job` reports as the job's error, when

- it blocks again after a TMPRL1101 eviction on this worker (one block is forgiven: a
  worker process stalled as a whole, by a step holding the GIL or by swapping, can delay
  any activation once), or
- one activation stays blocked for `stuck_after` seconds: a thread that does not return
  never leads to the eviction that would count a second block.

The blocked thread is left alone: when it returns, temporalio sends a completion that the
server refuses (the workflow is closed) and evicts the run, and a task the worker had
already taken for that run is refused without running job code. The worker serves other
jobs meanwhile, on other threads.

The watchdog relies on how temporalio (1.x) calls its executor: `submit(fn, activation)`,
one `WorkflowActivation` per call. Should that change, blocked jobs would hang again, so
any other call is logged as an error (once), and `activations` counts the activations it
watched (a test asserts it sees those of an ordinary job).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from traceback import StackSummary
from types import FrameType
from typing import Any

from temporalio.bridge.proto.workflow_activation import WorkflowActivation

from jobkit_dispatch.engines.temporal._model import BLOCKED_ERROR
from jobkit_engine import JobError

log = logging.getLogger("jobkit.temporal.watchdog")

DEADLOCK_TIMEOUT = 2.0  # seconds: temporalio's deadlock detector, fixed in the SDK

Terminate = Callable[[str, str, JobError], Awaitable[None]]

_DEADLOCK_CODE = "[TMPRL1101]"  # in the message of temporalio's eviction for a deadlock
_SNAPSHOT = 0.75  # of the threshold: when a slow activation's stack is taken
_MARGIN = 0.1  # seconds past the threshold: temporalio has surely given up on it then
_LAG_TOLERANCE = 1.0  # seconds late a timer may fire before the process counts as stalled
_KEPT = 10_000  # entries each table keeps: jobs blocked once, runs terminated, stacks
_STRIKE_MEMORY = 600.0  # seconds a first block is remembered
_INTERNAL = {"temporalio", "jobkit", "jobkit_engine", "jobkit_dispatch"}


class ActivationWatchdog(concurrent.futures.ThreadPoolExecutor):
    """A `workflow_task_executor` that terminates jobs that block their workflow thread.

    `terminate(workflow_id, run_id, error)` is a coroutine run on the worker's loop.
    """

    def __init__(
        self,
        terminate: Terminate,
        *,
        threshold: float = DEADLOCK_TIMEOUT,
        stuck_after: float = 5.0,
        max_workers: int = 500,
    ) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix="jobkit_workflow_")
        self.threshold = threshold
        self.stuck_after = stuck_after
        self._terminate = terminate
        self._lock = threading.Lock()
        self._workflow_ids: dict[str, str] = {}  # run id -> workflow id
        self._stacks: OrderedDict[str, StackSummary] = OrderedDict()  # run id -> where
        self._strikes: OrderedDict[str, float] = OrderedDict()  # workflow id -> last block
        self._terminated: OrderedDict[str, None] = OrderedDict()  # run ids
        self._tasks: set[asyncio.Task[None]] = set()
        self.activations = 0  # activations watched, of jobs whose workflow id is known
        self._unrecognised = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        activation = args[0] if len(args) == 1 and not kwargs else None
        if not isinstance(activation, WorkflowActivation):
            self._not_an_activation(fn)
            return super().submit(fn, *args, **kwargs)
        run_id = activation.run_id
        workflow_id = self._workflow_id(activation)
        if workflow_id is None:  # an eviction (see _workflow_id), or an unknown run
            return super().submit(fn, *args, **kwargs)
        if run_id in self._terminated:
            # A task the worker had taken before the termination: running the handler
            # again would only block another thread. Failing it lets the run be evicted.
            refused: concurrent.futures.Future[Any] = concurrent.futures.Future()
            refused.set_exception(RuntimeError(f"job {workflow_id} was terminated: blocked"))
            return refused
        try:
            loop = asyncio.get_running_loop()  # temporalio submits from the worker's loop
        except RuntimeError:
            return super().submit(fn, *args, **kwargs)
        watch = _Watch(self, loop, workflow_id, run_id)
        self.activations += 1
        future = super().submit(watch.run, fn, activation)
        future.add_done_callback(watch.done)
        watch.schedule(_SNAPSHOT * self.threshold, watch.snapshot)
        return future

    def _not_an_activation(self, fn: Callable[..., Any]) -> None:
        if not self._unrecognised:
            self._unrecognised = True
            log.error(
                "the block watchdog does not recognise how temporalio runs workflow tasks "
                "(it got %r without a WorkflowActivation): jobs that block their workflow "
                "thread will not be failed; check the temporalio version jobkit supports",
                fn,
            )

    def _workflow_id(self, activation: WorkflowActivation) -> str | None:
        """The workflow of a run: an activation names only its run, except the first one
        (`initialize_workflow`) that a worker gets for a run it does not have cached.
        None for an eviction, after counting it if temporalio evicts for a deadlock."""
        run_id = activation.run_id
        with self._lock:
            for job in activation.jobs:
                if job.HasField("initialize_workflow"):
                    self._workflow_ids[run_id] = job.initialize_workflow.workflow_id
                elif job.HasField("remove_from_cache"):
                    workflow_id = self._workflow_ids.pop(run_id, None)
                    stack = self._stacks.pop(run_id, None)
                    deadlock = _DEADLOCK_CODE in job.remove_from_cache.message
                    if deadlock and workflow_id is not None:
                        self._deadlocked(workflow_id, run_id, stack)
                    return None
            return self._workflow_ids.get(run_id)

    def _deadlocked(self, workflow_id: str, run_id: str, stack: StackSummary | None) -> None:
        """temporalio evicted `run_id` for a deadlock (the caller holds the lock)."""
        if run_id in self._terminated:
            return
        if self._blocked_before(workflow_id):
            self._end(workflow_id, run_id, stack)
            return
        _remember(self._strikes, workflow_id, time.monotonic())
        log.warning(
            "job %s blocked its workflow thread for more than %gs; Temporal retries its "
            "workflow task, and a second block fails the job",
            workflow_id,
            self.threshold,
        )

    def _blocked_before(self, workflow_id: str, since: float | None = None) -> bool:
        """Whether the job was evicted for a deadlock lately (and before `since`: the
        eviction for a block can arrive while that block goes on)."""
        last = self._strikes.get(workflow_id)
        if last is None or time.monotonic() - last > _STRIKE_MEMORY:
            return False
        return since is None or last < since

    def _end(self, workflow_id: str, run_id: str, stack: StackSummary | None) -> None:
        """Terminate the job (the caller holds the lock); the call runs on the loop."""
        self._strikes.pop(workflow_id, None)
        _remember(self._terminated, run_id, None)
        error = blocked_error(workflow_id, self.threshold, stack)
        log.error("%s", error.message)
        self._spawn(self._terminate(workflow_id, run_id, error))

    def _spawn(self, call: Coroutine[Any, Any, None]) -> None:
        try:
            task = asyncio.ensure_future(call)  # on the worker's loop, as temporalio calls us
        except RuntimeError:
            call.close()
            log.error("no event loop to terminate a blocked job on")
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def remember_stack(self, run_id: str, stack: StackSummary | None) -> None:
        """Where `run_id`'s slow activation was, for the error if its eviction ends it."""
        if stack is not None:
            with self._lock:
                _remember(self._stacks, run_id, stack)

    def still_blocked(self, watch: _Watch, stack: StackSummary | None, *, stuck: bool) -> bool:
        """`watch`'s activation runs past the threshold (or `stuck_after`, when `stuck`):
        terminate its job if that is its second block; say whether it was terminated."""
        with self._lock:
            if watch.run_id in self._terminated:
                return True
            if not stuck and not self._blocked_before(watch.workflow_id, watch.started):
                return False
            self._end(watch.workflow_id, watch.run_id, stack or self._stacks.get(watch.run_id))
            return True


class _Watch:
    """The timers of one activation: where it is at 1.5 s, whether it still runs at 2 s
    (after an earlier block of its job) and at `stuck_after`."""

    def __init__(
        self,
        owner: ActivationWatchdog,
        loop: asyncio.AbstractEventLoop,
        workflow_id: str,
        run_id: str,
    ) -> None:
        self.owner = owner
        self.loop = loop
        self.workflow_id = workflow_id
        self.run_id = run_id
        self.thread: int | None = None
        self.started: float | None = None
        self.finished = False
        self.stack: StackSummary | None = None  # where it was at the snapshot
        self.timer: asyncio.TimerHandle | None = None

    def run(self, fn: Callable[[WorkflowActivation], Any], activation: WorkflowActivation) -> Any:
        self.thread = threading.get_ident()
        self.started = time.monotonic()
        return fn(activation)

    def done(self, _future: concurrent.futures.Future[Any]) -> None:
        self.finished = True  # the timers see it and stop; no wake-up of the loop

    def schedule(self, at: float, check: Callable[[], None]) -> None:
        """Call `check` when the activation has run `at` seconds."""
        elapsed = 0.0 if self.started is None else time.monotonic() - self.started
        self.timer = self.loop.call_later(max(at - elapsed, 0.0), check)

    def snapshot(self) -> None:
        if self.finished:
            return
        if self.started is None:  # still waiting for a thread
            self.schedule(_SNAPSHOT * self.owner.threshold, self.snapshot)
            return
        self.stack = _user_stack(self._frame())
        self.owner.remember_stack(self.run_id, self.stack)
        self.schedule(self.owner.threshold + _MARGIN, self.check)

    def check(self) -> None:
        if self.finished or self.owner.still_blocked(self, self.stack, stuck=False):
            return
        self.schedule(self.owner.stuck_after, self.check_stuck)

    def check_stuck(self) -> None:
        if self.finished or self.timer is None:
            return
        if self.loop.time() - self.timer.when() > _LAG_TOLERANCE:
            # The whole process stalled (the loop could not run either): look again later.
            self.schedule(self._elapsed() + self.owner.stuck_after, self.check_stuck)
            return
        self.owner.still_blocked(self, _user_stack(self._frame()), stuck=True)

    def _elapsed(self) -> float:
        return 0.0 if self.started is None else time.monotonic() - self.started

    def _frame(self) -> FrameType | None:
        return None if self.thread is None else sys._current_frames().get(self.thread)


def _remember(table: OrderedDict[str, Any], key: str, value: Any) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > _KEPT:
        table.popitem(last=False)


def blocked_error(workflow_id: str, threshold: float, stack: StackSummary | None) -> JobError:
    """The error of a blocked job, naming where its handler was when it is known."""
    where = ""
    if stack:
        first = stack[0]
        where = f" (at {first.filename}:{first.lineno} in {first.name})"
    message = (
        f"job {workflow_id!r} blocked its workflow thread for more than {threshold:g} s in "
        f"code outside steps{where}; Temporal allows {DEADLOCK_TIMEOUT:g} s, retries the "
        "workflow task and would never finish it. Move blocking or CPU-heavy work (sleep, "
        "I/O, long computations) into ctx.step.run"
    )
    text = "".join(stack.format()) if stack else None
    return JobError(BLOCKED_ERROR, message, text)


def _user_stack(frame: FrameType | None) -> StackSummary | None:
    """The blocked thread's stack from the outermost frame of job code inward."""
    if frame is None:
        return None
    frames = []
    seen: FrameType | None = frame
    while seen is not None:
        frames.append(seen)
        seen = seen.f_back
    frames.reverse()
    for index, each in enumerate(frames):
        if _is_job_code(each):
            return StackSummary.extract((f, f.f_lineno) for f in frames[index:])
    return None


def _is_job_code(frame: FrameType) -> bool:
    name = frame.f_globals.get("__name__")
    if not isinstance(name, str) or frame.f_code.co_filename.startswith("<"):
        return False
    top = name.partition(".")[0]
    return top not in _INTERNAL and top not in sys.stdlib_module_names
