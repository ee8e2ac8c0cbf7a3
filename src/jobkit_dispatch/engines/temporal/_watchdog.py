"""The block watchdog: a job whose handler blocks its workflow thread fails, visibly.

temporalio runs each workflow activation in a thread of the worker's
`workflow_task_executor` and, when one has not yielded after 2 s, fails the workflow
*task* ("TMPRL1101 potential deadlock"). Temporal retries the task, the handler (replayed)
blocks again, and the job would stay `running` forever. Handler code outside steps that
sleeps, does I/O or computes for seconds is the usual cause.

`ActivationWatchdog` is that executor. It times each activation and, when a job's thread
stays blocked past the threshold a second time on this worker, or once for longer than
`stuck_after` (a thread that never returns gets no second chance), it terminates the job's
workflow with a `WorkflowBlockedError` in the termination's details (`TERMINATION_KEY`),
which `get_job` reports as the job's error. One block is forgiven: a process stalled as a
whole (a step holding the GIL, swapping) can delay any activation once.

The blocked thread is left alone: when it returns, temporalio sends a completion that the
server refuses (the workflow is closed) and evicts the run; the worker serves other jobs
meanwhile, on other threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

from temporalio.bridge.proto.workflow_activation import WorkflowActivation

from jobkit_engine import JobError

log = logging.getLogger("jobkit.temporal.watchdog")

BLOCKED_ERROR = "WorkflowBlockedError"
DEADLOCK_TIMEOUT = 2.0  # seconds: temporalio's deadlock detector, fixed in the SDK

Terminate = Callable[[str, str, JobError], Awaitable[None]]

_LAG_TOLERANCE = 1.0  # seconds late a timer may fire before the process counts as stalled
_KEPT = 10_000  # jobs whose first block (runs whose termination) is remembered
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
        self._strikes: OrderedDict[str, float] = OrderedDict()  # workflow id -> first block
        self._terminated: OrderedDict[str, None] = OrderedDict()  # run ids
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        activation = args[0] if len(args) == 1 and not kwargs else None
        if not isinstance(activation, WorkflowActivation):
            return super().submit(fn, *args, **kwargs)
        workflow_id = self._workflow_id(activation)
        try:
            loop = asyncio.get_running_loop()  # temporalio submits from the worker's loop
        except RuntimeError:
            loop = None
        if workflow_id is None or loop is None:
            return super().submit(fn, *args, **kwargs)
        if activation.run_id in self._terminated:
            # A task the worker had taken before the termination: running the handler
            # again would only block another thread. Failing it lets the run be evicted.
            refused: concurrent.futures.Future[Any] = concurrent.futures.Future()
            refused.set_exception(RuntimeError(f"job {workflow_id} was terminated: blocked"))
            return refused
        watch = _Watch(self, loop, workflow_id, activation.run_id)
        future = super().submit(watch.run, fn, activation)
        future.add_done_callback(watch.done)
        watch.timer = loop.call_later(self.threshold, watch.check)
        return future

    def _workflow_id(self, activation: WorkflowActivation) -> str | None:
        """The workflow of a run: an activation names only its run, except the first one
        (`initialize_workflow`) that a worker gets for a run it does not have cached."""
        run_id = activation.run_id
        with self._lock:
            for job in activation.jobs:
                if job.HasField("initialize_workflow"):
                    self._workflow_ids[run_id] = job.initialize_workflow.workflow_id
                elif job.HasField("remove_from_cache"):  # an eviction, not handler code
                    self._workflow_ids.pop(run_id, None)
                    return None
            return self._workflow_ids.get(run_id)

    def blocked(self, watch: _Watch, frame: FrameType | None, stuck: bool = False) -> bool:
        """`watch`'s activation was blocked past the threshold (on the loop thread); say
        whether its job was terminated for it."""
        now = time.monotonic()
        with self._lock:
            first = self._strikes.pop(watch.workflow_id, None)
            if first is not None and now - first > _STRIKE_MEMORY:
                first = None
            if first is None and not stuck:
                _remember(self._strikes, watch.workflow_id, now)
            else:
                _remember(self._terminated, watch.run_id, None)
        if first is None and not stuck:
            log.warning(
                "job %s blocked its workflow thread for more than %gs; Temporal retries its "
                "workflow task, and a second block fails the job",
                watch.workflow_id,
                self.threshold,
            )
            return False
        error = blocked_error(watch.workflow_id, self.threshold, frame)
        log.error("%s", error.message)
        task = asyncio.ensure_future(self._terminate(watch.workflow_id, watch.run_id, error))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True


class _Watch:
    """One activation: its thread, when it started, and whether it was blocked."""

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
        self.counted = False  # a block of this activation is counted once
        self.timer: asyncio.TimerHandle | None = None

    def run(self, fn: Callable[[WorkflowActivation], Any], activation: WorkflowActivation) -> Any:
        self.thread = threading.get_ident()
        self.started = time.monotonic()
        return fn(activation)

    def check(self) -> None:
        """Timer: still running past the threshold?"""
        if self.finished or self.counted:
            return
        elapsed = self._elapsed()
        if elapsed < self.owner.threshold:  # it waited for a thread: count from its start
            self.timer = self.loop.call_later(self.owner.threshold - elapsed, self.check)
            return
        self.counted = True
        if self.owner.blocked(self, self._frame()):
            self.timer = None
            return
        self.timer = self.loop.call_later(self.owner.stuck_after - elapsed, self.check_stuck)

    def check_stuck(self) -> None:
        """Timer: still running after `stuck_after`? Then it will not return soon."""
        if self.finished or self.timer is None:
            return
        late = self.loop.time() - self.timer.when()
        if late > _LAG_TOLERANCE:  # the whole process stalled: look again later
            self.timer = self.loop.call_later(self.owner.stuck_after, self.check_stuck)
            return
        self.owner.blocked(self, self._frame(), stuck=True)
        self.timer = None

    def done(self, _future: concurrent.futures.Future[Any]) -> None:
        """In the activation's thread: a block seen only at the end (temporalio
        interrupts a busy thread right at the threshold) counts too."""
        self.finished = True
        if not self.counted and self._elapsed() >= self.owner.threshold:
            self.counted = True
            self.loop.call_soon_threadsafe(self.owner.blocked, self, None)

    def _elapsed(self) -> float:
        return 0.0 if self.started is None else time.monotonic() - self.started

    def _frame(self) -> FrameType | None:
        return None if self.thread is None else sys._current_frames().get(self.thread)


def _remember(table: OrderedDict[str, Any], key: str, value: Any) -> None:
    table[key] = value
    while len(table) > _KEPT:
        table.popitem(last=False)


def blocked_error(workflow_id: str, threshold: float, frame: FrameType | None) -> JobError:
    """The error of a blocked job, naming where its handler was when it could."""
    stack = _user_stack(frame)
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
    text = "".join(traceback.format_list(stack)) if stack else None
    return JobError(BLOCKED_ERROR, message, text)


def _user_stack(frame: FrameType | None) -> traceback.StackSummary:
    """The blocked thread's stack from the outermost frame of job code inward."""
    if frame is None:
        return traceback.StackSummary()
    summary = traceback.extract_stack(frame)
    frames = []
    seen = frame
    while seen is not None:
        frames.append(seen)
        seen = seen.f_back
    frames.reverse()
    for index, each in enumerate(frames):
        if _is_job_code(each):
            return traceback.StackSummary.from_list(summary[index:])
    return traceback.StackSummary()


def _is_job_code(frame: FrameType) -> bool:
    name = frame.f_globals.get("__name__")
    if not isinstance(name, str) or frame.f_code.co_filename.startswith("<"):
        return False
    top = name.partition(".")[0]
    return top not in _INTERNAL and top not in sys.stdlib_module_names
