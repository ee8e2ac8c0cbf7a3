"""`TemporalEngine`: jobs as workflows on a Temporal server.

A job id is a workflow id. Enqueueing starts `JobWorkflow` on the queue's task queue with
an id policy that never starts a second run for an id, running or closed; `get` reads the
workflow's status and memo; `cancel` requests cancellation, which the handler sees as
`asyncio.CancelledError` at its next await.

temporalio's client is async and tied to the event loop it was made on, so the engine
keeps one loop in a background thread: the sync methods (called from plain threads by
sync web apps) and the async ones (called from any loop) all run their calls there.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowFailureError,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RetryConfig, RPCError, RPCStatusCode

from jobkit.durations import Duration, to_seconds, utcnow
from jobkit.errors import EngineUnavailableError, JobNotFoundError
from jobkit.settings import JobkitSettings
from jobkit_dispatch.engines.base import EngineBase, JobRequest
from jobkit_dispatch.engines.temporal._model import MEMO_KEY, WORKFLOW_NAME, JobInput, JobState
from jobkit_engine import JobError, JobInfo, JobStatus
from jobkit_engine.runtime import DEFAULT_MAX_BYTES

if TYPE_CHECKING:
    from jobkit_dispatch.engines.temporal.worker import BackgroundWorker

T = TypeVar("T")

ENGINE = "temporal"

# Codes that mean "the server cannot be reached or cannot answer now": the dispatcher
# falls back to another engine instead of failing the dispatch.
_UNAVAILABLE = {
    RPCStatusCode.UNAVAILABLE,
    RPCStatusCode.DEADLINE_EXCEEDED,
    RPCStatusCode.RESOURCE_EXHAUSTED,
    RPCStatusCode.CANCELLED,
}


class _LoopThread:
    """An event loop in a daemon thread, started on first use."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name=self._name, daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run `coro` on the loop and wait for it from this (non-loop) thread."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a sync engine method was called on the engine's own loop")
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise EngineUnavailableError(f"Temporal did not answer within {timeout:g}s") from None

    async def arun(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await `coro` on the loop from any loop."""
        loop = self.loop
        if asyncio.get_running_loop() is loop:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    def stop(self) -> None:
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()


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
        step_heartbeat_timeout: Duration | None = 30.0,
        connect_timeout: float = 2.0,
        rpc_timeout: float = 5.0,
        max_payload_bytes: int = DEFAULT_MAX_BYTES,
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
        self._loop = _LoopThread(f"jobkit-temporal-{address}")
        self._client: Client | None = None
        self._connecting: asyncio.Lock | None = None
        self._workers: list[BackgroundWorker] = []

    @classmethod
    def from_settings(cls, settings: JobkitSettings) -> TemporalEngine:
        return cls(
            settings.temporal_address,
            settings.temporal_namespace,
            task_queue_prefix=settings.temporal_task_queue_prefix,
            sleep_threshold=settings.sleep_threshold,
            max_payload_bytes=settings.max_payload_bytes,
        )

    def task_queue(self, queue: str) -> str:
        """The Temporal task queue of a jobkit queue."""
        return f"{self.task_queue_prefix}{queue}"

    def __repr__(self) -> str:
        return f"TemporalEngine({self.address!r}, namespace={self.namespace!r})"

    # -- the Engine protocol -------------------------------------------------------------

    def enqueue(self, request: JobRequest) -> bool:
        return self._loop.run(self._enqueue(request), self._sync_timeout)

    async def aenqueue(self, request: JobRequest) -> bool:
        return await self._loop.arun(self._enqueue(request))

    def get(self, job_id: str) -> JobInfo | None:
        return self._loop.run(self._get(job_id), self._sync_timeout)

    async def aget(self, job_id: str) -> JobInfo | None:
        return await self._loop.arun(self._get(job_id))

    def cancel(self, job_id: str) -> bool:
        return self._loop.run(self._cancel(job_id), self._sync_timeout)

    async def acancel(self, job_id: str) -> bool:
        return await self._loop.arun(self._cancel(job_id))

    def close(self) -> None:
        """Stop the workers started with `start_worker`, then the engine's loop."""
        while self._workers:
            self._workers.pop().stop()
        self._client = None
        self._connecting = None
        self._loop.stop()

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
        if self._client is not None:
            return self._client
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._client is None:
                self._client = await self._connect()
        return self._client

    # -- implementation (runs on the engine's loop) --------------------------------------

    @property
    def _sync_timeout(self) -> float:
        return self.connect_timeout + self.rpc_timeout + 1.0

    @property
    def _rpc_timeout(self) -> timedelta:
        return timedelta(seconds=self.rpc_timeout)

    async def _connect(self) -> Client:
        try:
            return await asyncio.wait_for(
                Client.connect(
                    self.address,
                    namespace=self.namespace,
                    data_converter=pydantic_data_converter,
                    # A few quick retries: a dead server must not hold a dispatch for long.
                    retry_config=RetryConfig(
                        initial_interval_millis=50,
                        max_interval_millis=500,
                        max_elapsed_time_millis=int(self.rpc_timeout * 1000),
                        max_retries=3,
                    ),
                ),
                self.connect_timeout,
            )
        except (RuntimeError, OSError, TimeoutError, RPCError) as exc:
            raise EngineUnavailableError(
                f"cannot connect to Temporal at {self.address}: {exc}"
            ) from exc

    def _unavailable(self, exc: RPCError) -> EngineUnavailableError | RPCError:
        if exc.status in _UNAVAILABLE:
            return EngineUnavailableError(f"Temporal at {self.address} is unavailable: {exc}")
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
        )
        try:
            await client.start_workflow(
                WORKFLOW_NAME,
                job,
                id=request.job_id,
                task_queue=self.task_queue(request.queue),
                # One run per job id, ever: a repeat, or a dispatch after the job ended, is
                # a no-op.
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                start_delay=delay,
                memo=JobState.initial(job).memo(),
                static_summary=request.job_name,
                # With a worker of this client in this process, the server hands it the
                # first workflow task in the reply: one round trip less.
                request_eager_start=delay is None,
                rpc_timeout=self._rpc_timeout,
            )
        except WorkflowAlreadyStartedError:
            return False
        except RPCError as exc:
            raise self._unavailable(exc) from exc
        return True

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
        return await self._info(description, JobState.model_validate(memo))

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
            error = state.info(job_id, ENGINE).error or await self._failure(description)
            return state.info(job_id, ENGINE, status=JobStatus.FAILED, error=error, **finished)
        if status == WorkflowExecutionStatus.TIMED_OUT:
            error = JobError("JobTimeoutError", "the workflow ran past its execution timeout")
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
        """The failure in the workflow's history, when the memo has none (a workflow fault)."""
        try:
            await self._result(description)
        except WorkflowFailureError as exc:
            cause = exc.cause
            return JobError(getattr(cause, "type", None) or type(cause).__name__, str(cause))
        return JobError("WorkflowFailureError", "the workflow failed")

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
        return True


def _running_status(state: JobState, now: datetime) -> JobStatus:
    """A scheduled job whose time has come waits for a worker: it is queued."""
    if state.status == JobStatus.SCHEDULED and (
        state.scheduled_for is None or state.scheduled_for <= now
    ):
        return JobStatus.QUEUED
    return state.status
