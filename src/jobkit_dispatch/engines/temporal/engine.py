"""`TemporalEngine`: jobs as workflows on a Temporal server.

A job id is a workflow id. Enqueueing starts `JobWorkflow` on the queue's task queue with
an id policy that never starts a second run for an id, running or closed; `get` reads the
workflow's status and memo; `cancel` requests cancellation, which the handler sees as
`asyncio.CancelledError` at its next await. The engine's calls run on its own event loop
(`_loop.LoopThread`), whatever thread or loop they come from, and through a circuit
breaker (`_connection.Connection`): once Temporal failed to answer, calls fail at once
with the cause until a background probe finds it answering again.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from temporalio.api.enums.v1 import PendingWorkflowTaskState
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.exceptions import TerminatedError
from temporalio.service import RPCError, RPCStatusCode

from jobkit.circuit import CircuitBreaker
from jobkit.durations import Duration, to_seconds, utcnow
from jobkit.errors import EngineUnavailableError, JobNotFoundError
from jobkit.settings import JobkitSettings
from jobkit_dispatch.engines.base import EngineBase, JobRequest
from jobkit_dispatch.engines.temporal import _process
from jobkit_dispatch.engines.temporal._closed import failure_error, termination_error
from jobkit_dispatch.engines.temporal._connection import Connection
from jobkit_dispatch.engines.temporal._loop import LoopThread
from jobkit_dispatch.engines.temporal._model import (
    CANCELLED_UNSTARTED,
    HISTORY_LIMIT_EVENTS,
    HISTORY_WARN_EVENTS,
    MEMO_KEY,
    STEP_HEARTBEAT_TIMEOUT,
    WORKFLOW_NAME,
    JobInput,
    JobState,
)
from jobkit_dispatch.engines.temporal._starts import StartGate
from jobkit_engine import JobError, JobInfo, JobStatus
from jobkit_engine.runtime import DEFAULT_MAX_BYTES

if TYPE_CHECKING:
    from jobkit_dispatch.engines.temporal.worker import BackgroundWorker

ENGINE = "temporal"

# Codes that mean "the server cannot be reached or cannot answer now": the dispatcher
# falls back to another engine instead of failing the dispatch.
_UNAVAILABLE = {
    RPCStatusCode.UNAVAILABLE,
    RPCStatusCode.DEADLINE_EXCEEDED,
    RPCStatusCode.RESOURCE_EXHAUSTED,
    RPCStatusCode.CANCELLED,
}


class TemporalEngine(EngineBase):
    """Runs jobs as workflows on Temporal; a jobkit worker must serve the job's queue."""

    name: ClassVar[str] = ENGINE
    supports_delay: ClassVar[bool] = True  # a workflow start delay
    supports_durable_sleep: ClassVar[bool] = True  # a timer; the slot is given back meanwhile
    supports_cancel_running: ClassVar[bool] = True  # a cancellation request reaches the handler
    supports_progress: ClassVar[bool] = True  # report_progress updates the workflow memo

    def __init__(
        self,
        address: str = "127.0.0.1:7233",
        namespace: str = "default",
        *,
        task_queue_prefix: str = "jobkit-",
        sleep_threshold: Duration = 5.0,
        step_heartbeat_timeout: Duration | None = STEP_HEARTBEAT_TIMEOUT,
        connect_timeout: float = 2.0,
        rpc_timeout: float = 5.0,
        start_timeout: float = 30.0,
        max_starts_in_flight: int = 128,
        circuit_cool_down: float = 5.0,
        max_payload_bytes: int = DEFAULT_MAX_BYTES,
        history_warn_events: int = HISTORY_WARN_EVENTS,
        history_limit_events: int = HISTORY_LIMIT_EVENTS,
    ) -> None:
        self.address = address
        self.namespace = namespace
        self.task_queue_prefix = task_queue_prefix
        self.sleep_threshold = to_seconds(sleep_threshold)
        self.step_heartbeat_timeout = (
            None if step_heartbeat_timeout is None else to_seconds(step_heartbeat_timeout)
        )
        self.connect_timeout = connect_timeout
        self.rpc_timeout = rpc_timeout
        self.max_payload_bytes = max_payload_bytes
        # A job's history: a warning is logged past the first, the job fails at the second.
        self.history_warn_events = history_warn_events
        self.history_limit_events = history_limit_events
        # The settings it was built from: its in-process workers read the queue Redis from
        # them (the fence against RQ); None means the process's settings.
        self.settings: JobkitSettings | None = None
        self._loop = LoopThread(f"jobkit-temporal-{address}")
        self._connection = Connection(
            address,
            namespace,
            self._loop,
            connect_timeout=connect_timeout,
            rpc_timeout=rpc_timeout,
            cool_down=circuit_cool_down,
        )
        # Starts: at most so many in flight, each tried within `start_timeout` (`_starts`).
        self._starts = StartGate(
            address, limit=max_starts_in_flight, timeout=start_timeout, rpc_timeout=rpc_timeout
        )
        self._workers: list[BackgroundWorker] = []
        _process.track(self)  # a fork and the process's exit

    @classmethod
    def from_settings(cls, settings: JobkitSettings) -> TemporalEngine:
        engine = cls(
            settings.temporal_address,
            settings.temporal_namespace,
            task_queue_prefix=settings.temporal_task_queue_prefix,
            sleep_threshold=settings.sleep_threshold,
            circuit_cool_down=settings.circuit_cool_down,
            max_payload_bytes=settings.max_payload_bytes,
        )
        engine.settings = settings
        return engine

    def task_queue(self, queue: str) -> str:
        """The Temporal task queue of a jobkit queue."""
        return f"{self.task_queue_prefix}{queue}"

    def __repr__(self) -> str:
        return f"TemporalEngine({self.address!r}, namespace={self.namespace!r})"

    @property
    def breaker(self) -> CircuitBreaker:
        """Open while Temporal is taken for unreachable: calls fail at once meanwhile."""
        return self._connection.breaker

    # -- the Engine protocol -------------------------------------------------------------

    def availability(self, request: JobRequest) -> str | None:
        """The open circuit's cause, or None: answered from memory, no network call."""
        return self._connection.refusal()

    async def aavailability(self, request: JobRequest) -> str | None:
        return self.availability(request)  # from memory: no thread needed

    def enqueue(self, request: JobRequest) -> bool:
        with self._connection.call():
            timeout = self.connect_timeout + self._starts.timeout + 1.0
            return self._loop.run(self._enqueue(request), timeout)

    async def aenqueue(self, request: JobRequest) -> bool:
        with self._connection.call():
            return await self._loop.arun(self._enqueue(request))

    def get(self, job_id: str) -> JobInfo | None:
        with self._connection.call():
            return self._loop.run(self._get(job_id), self._sync_timeout)

    async def aget(self, job_id: str) -> JobInfo | None:
        with self._connection.call():
            return await self._loop.arun(self._get(job_id))

    def cancel(self, job_id: str) -> bool:
        with self._connection.call():
            return self._loop.run(self._cancel(job_id), self._sync_timeout)

    async def acancel(self, job_id: str) -> bool:
        with self._connection.call():
            return await self._loop.arun(self._cancel(job_id))

    def close(self) -> None:
        """Stop the workers started with `start_worker`, then the engine's loop once the
        calls in flight are over; the next call connects again."""
        while self._workers:
            self._workers.pop().stop()
        self._loop.stop()
        self._connection.reset()

    # -- workers in this process ---------------------------------------------------------

    def start_worker(
        self, queues: Sequence[str], *, concurrency: int | None = None, **worker_options: Any
    ) -> BackgroundWorker:
        """Serve `queues` from this process, on this engine's connection (tests, dev).

        Job modules must be imported already. Stop it with `.stop()` (or use `with`).
        """
        from jobkit_dispatch.engines.temporal.worker import BackgroundWorker

        worker = BackgroundWorker(self, queues, concurrency=concurrency, **worker_options)
        self._workers.append(worker.start())
        return worker

    async def client(self) -> Client:
        """The connected temporalio client; call it on this engine's loop only."""
        return await self._connection.client()

    # -- implementation (runs on the engine's loop) --------------------------------------

    @property
    def _sync_timeout(self) -> float:
        return self.connect_timeout + self.rpc_timeout + 1.0

    @property
    def _rpc_timeout(self) -> timedelta:
        return timedelta(seconds=self.rpc_timeout)

    def _unavailable(self, exc: RPCError) -> EngineUnavailableError | RPCError:
        if exc.status in _UNAVAILABLE:
            why = f"RPCError {exc.status.name}: {exc.message or 'no detail given'}"
            return EngineUnavailableError(f"Temporal at {self.address} is unavailable: {why}")
        return exc

    async def _enqueue(self, request: JobRequest) -> bool:
        client = await self.client()
        now = utcnow()
        due = request.due_at(now)
        delay = None if due is None or due <= now else due - now
        job = JobInput(
            job_name=request.job_name,
            payload=request.payload,
            queue=request.queue,
            reason=request.reason,
            max_attempts=request.max_attempts,
            created_at=now,
            scheduled_for=None if delay is None else due,
            sleep_threshold=self.sleep_threshold,
            step_heartbeat_timeout=self.step_heartbeat_timeout,
            max_payload_bytes=self.max_payload_bytes,
            history_warn_events=self.history_warn_events,
            history_limit_events=self.history_limit_events,
            fence_rq="rq" in request.fence,
            hand_over_rq="rq" in request.hand_over,
        )
        try:
            return await self._starts.start_job(
                client, job, request.job_id, self.task_queue(request.queue), delay
            )
        except RPCError as exc:
            raise self._unavailable(exc) from exc

    async def _describe(self, job_id: str) -> WorkflowExecutionDescription | None:
        client = await self.client()
        try:
            description = await client.get_workflow_handle(job_id).describe(
                rpc_timeout=self._rpc_timeout
            )
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return None
            raise self._unavailable(exc) from exc
        return description if description.workflow_type == WORKFLOW_NAME else None

    async def _get(self, job_id: str) -> JobInfo | None:
        description = await self._describe(job_id)
        if description is None:
            return None
        memo = await description.memo_value(MEMO_KEY, None)
        if memo is None:
            return None
        state = JobState.model_validate(memo)
        if state.moved_to is not None:
            return None  # another engine had the job first and ran it: it is the job
        return await self._info(description, state)

    async def _info(self, description: WorkflowExecutionDescription, state: JobState) -> JobInfo:
        job_id = description.id
        status = description.status
        if status in (None, WorkflowExecutionStatus.RUNNING):
            return state.info(job_id, ENGINE, status=_running_status(state, utcnow()))
        finished = {"finished_at": description.close_time}
        if status == WorkflowExecutionStatus.COMPLETED:
            result = await self._result(description)
            return state.info(
                job_id, ENGINE, status=JobStatus.SUCCEEDED, result=result, error=None, **finished
            )
        if status == WorkflowExecutionStatus.FAILED:
            # The memo has the error when the workflow failed the job itself; an error it
            # holds otherwise is an earlier attempt's.
            error = state.error if state.status == JobStatus.FAILED else None
            error = JobError(**error.model_dump()) if error else await self._failure(description)
            return state.info(job_id, ENGINE, status=JobStatus.FAILED, error=error, **finished)
        if status == WorkflowExecutionStatus.TIMED_OUT:
            error = JobError("JobTimeoutError", "the workflow ran past its execution timeout")
            return state.info(job_id, ENGINE, status=JobStatus.FAILED, error=error, **finished)
        if status == WorkflowExecutionStatus.TERMINATED:
            error = await self._termination(description)
            if error is not None:  # jobkit stopped the job for a fault of its own
                return state.info(job_id, ENGINE, status=JobStatus.FAILED, error=error, **finished)
        # Cancelled, or terminated by an operator: stopped on request, without a result.
        return state.info(
            job_id, ENGINE, status=JobStatus.CANCELLED, scheduled_for=None, **finished
        )

    async def _result(self, description: WorkflowExecutionDescription) -> Any:
        client = await self.client()
        handle = client.get_workflow_handle(description.id, run_id=description.run_id)
        try:
            return await handle.result(follow_runs=False, rpc_timeout=self._rpc_timeout)
        except RPCError as exc:
            raise self._unavailable(exc) from exc

    async def _failure(self, description: WorkflowExecutionDescription) -> JobError:
        """The failure in the workflow's history (a non-determinism error, a fault)."""
        try:
            await self._result(description)
        except WorkflowFailureError as exc:
            return failure_error(description.id, exc.cause)
        return failure_error(description.id, None)

    async def _termination(self, description: WorkflowExecutionDescription) -> JobError | None:
        """The error jobkit recorded when it terminated the workflow, if it did."""
        try:
            await self._result(description)
        except WorkflowFailureError as exc:
            if isinstance(exc.cause, TerminatedError):
                return termination_error(exc.cause.details)
        return None

    async def _cancel(self, job_id: str) -> bool:
        description = await self._describe(job_id)
        if description is None:
            raise JobNotFoundError(job_id)
        if description.status != WorkflowExecutionStatus.RUNNING:
            return False
        client = await self.client()
        handle = client.get_workflow_handle(job_id, run_id=description.run_id)
        try:
            await handle.cancel(rpc_timeout=self._rpc_timeout)
        except RPCError as exc:
            if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION):
                return False  # it finished in between
            raise self._unavailable(exc) from exc
        if _unstarted(description) and not await _fencing(description):
            await self._end_unstarted(handle)
        return True

    async def _end_unstarted(self, handle: WorkflowHandle[Any, Any]) -> None:
        """End a cancelled job that no worker has started: it is cancelled now, instead of
        when a worker of its queue, if any ever runs, picks it up.

        Looked at again after the cancellation request: a worker that starts it from then
        on sees the request before any job code runs, so terminating it loses nothing.
        """
        try:
            description = await handle.describe(rpc_timeout=self._rpc_timeout)
            if _unstarted(description):
                await handle.terminate(reason=CANCELLED_UNSTARTED, rpc_timeout=self._rpc_timeout)
        except RPCError:  # closed meanwhile, or unreachable: a worker ends it as cancelled
            pass


async def _fencing(description: WorkflowExecutionDescription) -> bool:
    """The job must settle with RQ's copy before it ends, cancelled or not: a worker ends
    it (see `JobWorkflow._fence_rq`), never a termination."""
    memo = await description.memo_value(MEMO_KEY, None)
    return memo is not None and JobState.model_validate(memo).fencing is True


def _unstarted(description: WorkflowExecutionDescription) -> bool:
    """No worker has started a workflow task of this workflow, so no job code ran."""
    if description.status != WorkflowExecutionStatus.RUNNING:
        return False
    raw = description.raw_description
    if (
        raw.HasField("pending_workflow_task")
        and raw.pending_workflow_task.state
        == PendingWorkflowTaskState.PENDING_WORKFLOW_TASK_STATE_STARTED
    ):
        return False
    # Started, first workflow task scheduled, cancellation requested: nothing else yet.
    return (description.history_length or 0) <= 3


def _running_status(state: JobState, now: datetime) -> JobStatus:
    """A scheduled job whose time has come waits for a worker: it is queued."""
    if state.status == JobStatus.SCHEDULED and (
        state.scheduled_for is None or state.scheduled_for <= now
    ):
        return JobStatus.QUEUED
    return state.status
