"""A job this worker does not know: leave it to a worker of the task queue that does.

During a rolling deploy, workers running the old code and the new poll one task queue,
and the generic workflow of a job only the new code defines can land on an old worker.
There the workflow raises `HandBack`, which fails the workflow *task*, not the workflow:
nothing is added to the job's history, the server gives the task to a worker of the
queue again (at once, then after its 10 s task timeout, then at growing intervals up to
10 minutes: Temporal's own retry of failed workflow tasks), and a worker that knows the
job runs it from the start, or from its history if it had begun.

Each worker process remembers when it first met each such job and logs it then, once
(why, and the outcome line of `jobkit.jobs`);
temporalio's warning at every failed task is silenced for `HandBack`. Once
`unknown_job_grace` seconds have passed since then, the worker that has the task fails
the job with `UnknownJobError`, naming the job, the grace and the modules it imports:
in the workflow itself when the job has not started (its history holds nothing the
worker would have to replay), else by terminating the workflow with that error in the
termination details (a failure decided in a replay would not match the job's history),
which `get_job` reports as the job's failure.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from temporalio import workflow
from temporalio.service import RPCError

from jobkit.errors import UnknownJobError
from jobkit_dispatch.engines.temporal._model import TERMINATION_KEY, ErrorState, JobInput
from jobkit_engine import JobError, JobStatus, default_registry
from jobkit_engine.runtime import Failed, Finish, log_handed_back, log_outcome

log = logging.getLogger("jobkit.temporal.worker")

_REMEMBERED = 10_000  # jobs a worker process remembers having met


class HandBack(Exception):
    """Raised in a workflow this worker cannot run: fails its workflow task only, so a
    worker that knows the job takes the task."""


class _AnyExceptionButHandBack(type):
    def __instancecheck__(cls, instance: object) -> bool:
        return isinstance(instance, Exception) and not isinstance(instance, HandBack)

    def __subclasscheck__(cls, subclass: type) -> bool:
        return issubclass(subclass, Exception) and not issubclass(subclass, HandBack)


class FailsTheWorkflow(Exception, metaclass=_AnyExceptionButHandBack):
    """For a worker's `workflow_failure_exception_types`: every exception raised in a
    workflow fails it (a replay that diverges, an input that cannot be decoded: retrying
    the task would run the same code again), except `HandBack`, which fails the task.
    Never raised: only `isinstance` and `issubclass` checks against it matter."""


Terminate = Callable[[str, str, JobError], Awaitable[None]]


@dataclass(frozen=True)
class _TaskQueue:
    grace: float
    terminate: Terminate
    loop: asyncio.AbstractEventLoop


_queues: dict[str, _TaskQueue] = {}
_lock = threading.Lock()
_first_met: OrderedDict[str, float] = OrderedDict()  # workflow id -> monotonic time


def serve_task_queue(
    task_queue: str, grace: float, terminate: Terminate, loop: asyncio.AbstractEventLoop
) -> None:
    """A worker of this process serves `task_queue`: how it treats jobs it does not know."""
    with _lock:
        _queues[task_queue] = _TaskQueue(grace, terminate, loop)
    _silence_handed_back_tasks()


def stop_serving(task_queue: str) -> None:
    with _lock:
        _queues.pop(task_queue, None)


def unknown_here(job: JobInput) -> Failed | None:
    """Called first in the workflow. None when this worker knows the job; raises
    `HandBack` while a worker that knows it may still come; the job's failure once the
    grace is over and nothing would have to be replayed."""
    if job.job_name in default_registry:
        return None
    info = workflow.info()
    queue = _queues.get(info.task_queue)
    grace = queue.grace if queue is not None else 0.0
    waited = _waited(info.workflow_id, job, grace)
    if waited < grace:
        raise HandBack(f"job {info.workflow_id}: this worker does not know {job.job_name!r}")
    log.error(
        "job %s (%s): no worker that knows it took it within %gs; failed",
        info.workflow_id,
        job.job_name,
        grace,
    )
    error = JobError.from_exception(
        UnknownJobError(
            job.job_name, default_registry.names(), grace=grace, modules=default_registry.modules()
        )
    )
    if not workflow.unsafe.is_replaying() or queue is None:
        return Failed(error, None)
    # A failure decided in a replay: the workflow's own line would be silent, so say it here.
    log_outcome(
        Finish(JobStatus.FAILED, error=error),
        job_id=info.workflow_id,
        job_name=job.job_name,
        queue=job.queue,
        engine="temporal",
        attempt=None,
        duration=None,
        now=workflow.now(),
    )
    asyncio.run_coroutine_threadsafe(
        queue.terminate(info.workflow_id, info.run_id, error), queue.loop
    )
    raise HandBack(f"job {info.workflow_id}: terminated, {job.job_name!r} is unknown")


def _waited(workflow_id: str, job: JobInput, grace: float) -> float:
    """Seconds since this process first met the job; logs that first meeting."""
    job_name = job.job_name
    now = time.monotonic()
    with _lock:
        first = _first_met.setdefault(workflow_id, now)
        _first_met.move_to_end(workflow_id)
        if len(_first_met) > _REMEMBERED:
            _first_met.popitem(last=False)
    if first == now and grace > 0:  # met just now: say so, once
        log.warning(
            "job %s: this worker does not know job %r (it imports %s); handed back for a "
            "worker that does, failed if none takes it within %gs (JOBKIT_UNKNOWN_JOB_GRACE)",
            workflow_id,
            job_name,
            ", ".join(default_registry.modules()) or "no job module",
            grace,
        )
        log_handed_back(
            job_id=workflow_id, job_name=job_name, queue=job.queue, engine="temporal", attempt=None
        )
    return now - first


async def terminate_with(client: Any, workflow_id: str, run_id: str, error: JobError) -> None:
    """Terminate a job's workflow with `error` in the details, which `get_job` reports."""
    details = {TERMINATION_KEY: ErrorState.of(error).model_dump()}
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    try:
        await handle.terminate(details, reason=f"jobkit: {error.type}")
    except RPCError as exc:  # it closed meanwhile (terminated by an earlier task, say)
        log.warning("could not terminate job %s: %s", workflow_id, exc)


class _DropHandBack(logging.Filter):
    """temporalio warns, with a traceback, at every failed workflow task: for a job handed
    back, jobkit's own line (once per job) says it instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, HandBack)


_FILTER = _DropHandBack()


def _silence_handed_back_tasks() -> None:
    logger = logging.getLogger("temporalio.worker._workflow_instance")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
