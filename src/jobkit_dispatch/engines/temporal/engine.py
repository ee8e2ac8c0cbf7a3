"""`TemporalEngine`: jobs as workflows on a Temporal server.

A job id is a workflow id. Enqueueing starts `JobWorkflow` on the queue's task queue with
an id policy that never starts a second run for an id, running or closed (only `retry`
does, `_retry`), and jobkit's search attributes (`_attributes`); `get` reads the latest
run's status and memo (`_reading`); `cancel` requests cancellation, which the handler sees
as `asyncio.CancelledError` at its next await. Operators list jobs through visibility
queries (`_listing`), read one in full from its history (`_detail`), retry and purge.

The engine's calls run on its own event loop (`_loop.LoopThread`), whatever thread or
loop they come from, and through a circuit breaker (`_connection.Connection`): once
Temporal failed to answer, calls fail at once with the cause until a background probe
finds it answering again.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from temporalio.api.enums.v1 import PendingWorkflowTaskState
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowHandle,
)
from temporalio.service import RPCError, RPCStatusCode

from jobkit.circuit import CircuitBreaker
from jobkit.durations import Duration, to_seconds, utcnow
from jobkit.errors import JobNotFoundError
from jobkit.settings import JobkitSettings
from jobkit_dispatch.engines.base import EngineBase, JobRequest
from jobkit_dispatch.engines.recovery import JobDetail, JobPage, JobQuery
from jobkit_dispatch.engines.temporal import _detail, _process, _purge, _retry
from jobkit_dispatch.engines.temporal._attributes import Registration
from jobkit_dispatch.engines.temporal._connection import Connection
from jobkit_dispatch.engines.temporal._listing import Lister
from jobkit_dispatch.engines.temporal._loop import LoopThread
from jobkit_dispatch.engines.temporal._model import (
    CANCELLED_UNSTARTED,
    HISTORY_LIMIT_EVENTS,
    HISTORY_WARN_EVENTS,
    MEMO_KEY,
    STEP_HEARTBEAT_TIMEOUT,
    JobInput,
    JobState,
)
from jobkit_dispatch.engines.temporal._reading import Link, describe_run, job_info, job_state
from jobkit_dispatch.engines.temporal._starts import StartGate
from jobkit_engine import JobInfo, JobStatus
from jobkit_engine.runtime import DEFAULT_MAX_BYTES

if TYPE_CHECKING:
    from jobkit_dispatch.engines.temporal.worker import BackgroundWorker

ENGINE = "temporal"
PURGE_TIMEOUT = 3600.0  # seconds a sync purge may take in all
T = TypeVar("T")


class TemporalEngine(EngineBase):
    """Runs jobs as workflows on Temporal; a jobkit worker must serve the job's queue."""

    name: ClassVar[str] = ENGINE
    supports_delay: ClassVar[bool] = True  # a workflow start delay
    supports_durable_sleep: ClassVar[bool] = True  # a timer; the slot is given back meanwhile
    supports_cancel_running: ClassVar[bool] = True  # a cancellation request reaches the handler
    supports_progress: ClassVar[bool] = True  # report_progress updates the workflow memo
    supports_listing: ClassVar[bool] = True  # visibility queries and the run's history
    supports_retry: ClassVar[bool] = True  # a new run of the workflow id, from the failed step
    supports_purge: ClassVar[bool] = True  # DeleteWorkflowExecution of each run

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
        # Whether the server takes jobkit's search attributes (`_attributes`).
        self.attributes = Registration(address, namespace)
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

    # -- operator capabilities (`engines/recovery.py`) ------------------------------------

    def list_jobs(self, query: JobQuery) -> JobPage:
        return self._operate(lambda: self._list(query))

    async def alist_jobs(self, query: JobQuery) -> JobPage:
        return await self._aoperate(lambda: self._list(query))

    def describe(self, job_id: str) -> JobDetail | None:
        return self._operate(lambda: self._describe_job(job_id))

    async def adescribe(self, job_id: str) -> JobDetail | None:
        return await self._aoperate(lambda: self._describe_job(job_id))

    def retry(self, job_id: str, *, from_scratch: bool = False) -> JobInfo:
        return self._operate(lambda: self._retry(job_id, from_scratch))

    async def aretry(self, job_id: str, *, from_scratch: bool = False) -> JobInfo:
        return await self._aoperate(lambda: self._retry(job_id, from_scratch))

    def purge(self, queue: str, status: JobStatus) -> int:
        # As long as it takes: a page of deletions at a time, each call bounded.
        return self._operate(lambda: self._purge(queue, status), timeout=PURGE_TIMEOUT)

    async def apurge(self, queue: str, status: JobStatus) -> int:
        return await self._aoperate(lambda: self._purge(queue, status))

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

    def _operate(self, call: Callable[[], Coroutine[Any, Any, T]], timeout: float = 0.0) -> T:
        """An operator call, from a plain thread: a few RPCs, each within the timeout."""
        with self._connection.call():
            return self._loop.run(call(), timeout or self.connect_timeout + 10 * self.rpc_timeout)

    async def _aoperate(self, call: Callable[[], Coroutine[Any, Any, T]]) -> T:
        with self._connection.call():
            return await self._loop.arun(call())

    async def _lister(self) -> Lister:
        return Lister(await self.link(), self.attributes, self.task_queue_prefix)

    async def _list(self, query: JobQuery) -> JobPage:
        return await (await self._lister()).page(query)

    async def _describe_job(self, job_id: str) -> JobDetail | None:
        return await _detail.describe(await self.link(), job_id)

    async def _retry(self, job_id: str, from_scratch: bool) -> JobInfo:
        return await _retry.retry(await self.link(), self.attributes, job_id, from_scratch)

    async def _purge(self, queue: str, status: JobStatus) -> int:
        return await _purge.purge(await self._lister(), queue, status)

    @property
    def _rpc_timeout(self) -> timedelta:
        return timedelta(seconds=self.rpc_timeout)

    async def _enqueue(self, request: JobRequest) -> bool:
        link = await self.link()
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
                link.client,
                job,
                request.job_id,
                self.task_queue(request.queue),
                delay,
                self.attributes,
            )
        except RPCError as exc:
            raise link.unavailable(exc) from exc

    async def link(self) -> Link:
        """The connected client with this engine's timeout and error mapping."""
        client = await self.client()
        return Link(client, self.address, self.namespace, self._rpc_timeout)

    async def _get(self, job_id: str) -> JobInfo | None:
        link = await self.link()
        description = await describe_run(link, job_id)
        state = None if description is None else await job_state(description)
        if description is None or state is None:
            return None
        try:
            return await job_info(link, description, state)
        except JobNotFoundError:  # deleted since it was described
            return None

    async def _cancel(self, job_id: str) -> bool:
        link = await self.link()
        description = await describe_run(link, job_id)
        if description is None:
            raise JobNotFoundError(job_id)
        if description.status != WorkflowExecutionStatus.RUNNING:
            return False
        handle = link.client.get_workflow_handle(job_id, run_id=description.run_id)
        try:
            await handle.cancel(rpc_timeout=self._rpc_timeout)
        except RPCError as exc:
            if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION):
                return False  # it finished in between
            raise link.unavailable(exc) from exc
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
