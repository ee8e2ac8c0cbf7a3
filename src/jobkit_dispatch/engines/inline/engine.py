"""The inline engine: jobs run in this process, on an event loop in a background thread.

It honours every semantic of the contract (memoized steps, retries with backoff, timeouts,
durable sleep, progress, cancellation, idempotent ids), so it is both the engine for unit
tests and the reference the conformance suite is written against. Like a real worker it
runs jobs apart from the caller: `dispatch_job` returns at once and `get_job` reports.

With a `ManualClock`, delays, backoff and durable sleeps wait for `clock.advance()`, or
for `skip_idle_time()`, which jumps the clock to the next deadline once every job is
waiting on it (what `jobkit_dispatch.testing.wait_for_job` does).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, ClassVar

from jobkit.errors import JobNotFoundError
from jobkit.queues import QueueRegistry, default_queues
from jobkit.settings import get_settings
from jobkit_dispatch.engines.base import EngineBase, JobRequest
from jobkit_dispatch.engines.inline.history import ObservedMemo
from jobkit_dispatch.engines.inline.operations import InlineOperations
from jobkit_dispatch.engines.inline.record import JobRecord
from jobkit_engine import (
    Clock,
    JobContext,
    JobInfo,
    JobRegistry,
    JobStatus,
    ManualClock,
    Progress,
    StrictMode,
    SystemClock,
    default_registry,
)
from jobkit_engine.runtime import (
    Cancelled,
    Finish,
    MemoSteps,
    Outcome,
    execute_job,
    log_outcome,
    settle,
)

_WAITING = (JobStatus.SCHEDULED, JobStatus.SLEEPING)


class _JobClock:
    """The engine's clock as one job sees it: notes when the job waits on it, so time
    skipping knows a running job is only waiting for time to pass."""

    def __init__(self, engine: InlineEngine, record: JobRecord) -> None:
        self._engine = engine
        self._record = record

    def now(self) -> datetime:
        return self._engine.clock.now()

    async def sleep_until(self, when: datetime) -> None:
        self._engine._set_clock_wait(self._record, when)
        try:
            await self._engine.clock.sleep_until(when)
        finally:
            self._engine._set_clock_wait(self._record, None)


class InlineEngine(InlineOperations, EngineBase):
    """Runs jobs in-process with the full job semantics; per-queue concurrency applies.

    `strict=True` (or a `StrictMode`) runs every handler under strict mode, as the test
    helpers in `jobkit_dispatch.testing` do by default. It lists its jobs, describes,
    retries and purges them too (`InlineOperations`), from the history each job keeps.
    """

    name: ClassVar[str] = "inline"
    supports_delay: ClassVar[bool] = True
    supports_durable_sleep: ClassVar[bool] = True
    supports_cancel_running: ClassVar[bool] = True
    supports_progress: ClassVar[bool] = True
    supports_listing: ClassVar[bool] = True
    supports_retry: ClassVar[bool] = True
    supports_purge: ClassVar[bool] = True

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        sleep_threshold: timedelta = timedelta(seconds=5),
        concurrency: Mapping[str, int] | None = None,
        registry: JobRegistry = default_registry,
        queues: QueueRegistry = default_queues,
        max_payload_bytes: int | None = None,
        strict: bool | StrictMode = False,
    ) -> None:
        self.clock = clock or SystemClock()
        # Strict mode holds code outside steps to Temporal's rules (jobkit_engine.strict).
        self.strict: StrictMode | None = StrictMode() if strict is True else (strict or None)
        self._sleep_threshold = sleep_threshold
        # The limit of every engine (JOBKIT_MAX_PAYLOAD_BYTES), so a test sees what RQ and
        # Temporal would refuse.
        self._max_bytes = (
            get_settings().max_payload_bytes if max_payload_bytes is None else max_payload_bytes
        )
        self._concurrency = dict(concurrency or {})
        self._registry = registry
        self._queues = queues
        self._lock = threading.Lock()
        self._records: dict[str, JobRecord] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> InlineEngine:
        return cls(
            sleep_threshold=timedelta(seconds=settings.sleep_threshold),
            max_payload_bytes=settings.max_payload_bytes,
        )

    # -- the Engine protocol -------------------------------------------------------------

    def enqueue(self, request: JobRequest) -> bool:
        now = self.clock.now()
        due = request.due_at(now)
        with self._lock:
            if request.job_id in self._records:
                return False
            waiting = due is not None and due > now
            record = JobRecord(
                request,
                JobStatus.SCHEDULED if waiting else JobStatus.QUEUED,
                now,
                scheduled_for=due if waiting else None,
            )
            self._records[request.job_id] = record
        self._start_soon(record)
        return True

    async def aenqueue(self, request: JobRequest) -> bool:
        return self.enqueue(request)  # never blocks: the job starts on the engine's loop

    def get(self, job_id: str) -> JobInfo | None:
        with self._lock:
            record = self._records.get(job_id)
            return None if record is None else record.info(self.name)

    async def aget(self, job_id: str) -> JobInfo | None:
        return self.get(job_id)

    def cancel(self, job_id: str) -> bool:
        with self._lock:
            record = self._records.get(job_id)
            if record is None:
                raise JobNotFoundError(job_id)
            if record.status.is_terminal:
                return False
            if record.status == JobStatus.RUNNING:
                record.cancel_requested = True
            else:
                self._finish(record, JobStatus.CANCELLED)
            task = record.task
        if task is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(task.cancel)
        return True

    async def acancel(self, job_id: str) -> bool:
        return self.cancel(job_id)

    def close(self) -> None:
        """Stop the engine; jobs not finished yet end as cancelled (they live in memory)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with self._lock:
            for record in self._records.values():
                record.cancel_requested = not record.status.is_terminal
        asyncio.run_coroutine_threadsafe(self._cancel_all(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        if not thread.is_alive():
            loop.close()  # else its self-pipe leaks and breaks when garbage-collected later
        self._loop = self._thread = None

    # -- time skipping (tests) -----------------------------------------------------------

    def is_idle(self) -> bool:
        """No job runs, is queued, or is due but not yet picked up."""
        now = self.clock.now()
        with self._lock:
            for record in self._records.values():
                if record.status == JobStatus.QUEUED:
                    return False
                if record.status == JobStatus.RUNNING:
                    waiting_until = record.clock_wait
                elif record.status in _WAITING:
                    waiting_until = record.scheduled_for
                else:
                    continue
                if waiting_until is None or waiting_until <= now:
                    return False
        return True

    def skip_idle_time(self) -> bool:
        """With a ManualClock: when every job waits on the clock, jump to the next deadline."""
        clock = self.clock
        if not isinstance(clock, ManualClock) or not self.is_idle():
            return False
        deadline = clock.next_deadline()
        if deadline is None:
            return False
        clock.advance(max(deadline - clock.now(), timedelta(0)))
        return True

    # -- the engine's event loop ---------------------------------------------------------

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="jobkit-inline", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def _start_soon(self, record: JobRecord) -> None:
        self._ensure_loop().call_soon_threadsafe(self._start, record)

    def _start(self, record: JobRecord) -> None:
        task = asyncio.get_running_loop().create_task(self._drive(record))
        with self._lock:
            record.task = task

    async def _cancel_all(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _slot(self, queue: str) -> asyncio.Semaphore:
        slot = self._slots.get(queue)
        if slot is None:
            limit = self._concurrency.get(queue)
            if limit is None:
                limit = self._queues.get(queue).concurrency if queue in self._queues else 1
            slot = self._slots[queue] = asyncio.Semaphore(limit)
        return slot

    async def _drive(self, record: JobRecord) -> None:
        """Take one job from enqueue to a final status: wait, run, retry or resume."""
        started = None
        try:
            while True:
                if record.scheduled_for is not None:
                    await self.clock.sleep_until(record.scheduled_for)
                    if not self._transition(record, _WAITING, JobStatus.QUEUED):
                        return
                async with self._slot(record.request.queue):
                    if not self._transition(record, (JobStatus.QUEUED,), JobStatus.RUNNING):
                        return
                    started = time.monotonic()
                    outcome = await self._run_once(record)
                if not self._apply(record, outcome, started):
                    return
        except asyncio.CancelledError:
            with self._lock:
                cancelled = record.cancel_requested or record.status == JobStatus.CANCELLED
                running = record.status == JobStatus.RUNNING
            if cancelled:
                self._apply(record, Cancelled(), started if running else None)
                return
            raise

    def _transition(
        self, record: JobRecord, before: tuple[JobStatus, ...], after: JobStatus
    ) -> bool:
        """Move the job on unless something (a cancel) moved it first."""
        with self._lock:
            if record.status not in before:
                return False
            record.status = after
            if after == JobStatus.RUNNING:
                record.started_at = self.clock.now()
                if not record.resuming:
                    record.attempts += 1
                    record.history.attempt_began(record.attempts, record.started_at)
                record.resuming = False
                record.scheduled_for = None
            return True

    async def _run_once(self, record: JobRecord) -> Outcome:
        request = record.request

        def make_context(definition: Any) -> JobContext:
            return JobContext(
                job_id=request.job_id,
                job_name=request.job_name,
                attempt=record.attempts,
                engine=self.name,
                step=MemoSteps(
                    ObservedMemo(record.memo, lambda *saved: self._step_saved(record, *saved)),
                    _JobClock(self, record),
                    self._sleep_threshold,
                    max_bytes=self._max_bytes,
                    before_step=lambda step_id: self._step_starts(record, step_id),
                ),
                progress_sink=lambda progress: self._set_progress(record, progress),
            )

        return await execute_job(
            request.job_name,
            request.payload,
            record.attempts,
            make_context,
            registry=self._registry,
            queues=self._queues,
            max_bytes=self._max_bytes,
            strict=self.strict,
        )

    async def _step_starts(self, record: JobRecord, step_id: str) -> None:
        """No step starts once a cancel was accepted, even in a handler that swallowed
        the interruption; one that starts is in the job's history."""
        with self._lock:
            if record.cancel_requested:
                raise asyncio.CancelledError()
            record.history.step_began(step_id, self.clock.now())

    def _step_saved(self, record: JobRecord, step_id: str, value: Any) -> None:
        with self._lock:
            record.history.step_saved(step_id, value, self.clock.now())

    def _set_clock_wait(self, record: JobRecord, until: datetime | None) -> None:
        with self._lock:
            record.clock_wait = until

    def _set_progress(self, record: JobRecord, progress: Progress) -> None:
        with self._lock:
            record.progress = progress

    def _apply(self, record: JobRecord, outcome: Outcome, started: float | None) -> bool:
        """Store what `settle` decides for an execution's outcome (begun at `started`, on
        the monotonic clock), and log it; True when the job has more to do."""
        now = self.clock.now()
        with self._lock:
            if record.status.is_terminal:  # cancelled while it was waiting
                return False
            decision = settle(outcome, now=now, cancel_requested=record.cancel_requested)
            record.history.execution_ended(outcome, decision, now)
            if isinstance(decision, Finish):
                record.result = decision.result
                if decision.error is not None or decision.status == JobStatus.SUCCEEDED:
                    record.error = decision.error
                self._finish(record, decision.status)
            else:
                record.status, record.scheduled_for = decision.status, decision.at
                record.resuming = decision.resume
                record.error = decision.error or record.error
        r, took = record.request, None if started is None else time.monotonic() - started
        log_outcome(
            decision,
            job_id=r.job_id,
            job_name=r.job_name,
            queue=r.queue,
            engine=self.name,
            attempt=record.attempts,
            duration=took,
            now=now,
        )
        return not isinstance(decision, Finish)

    def _finish(self, record: JobRecord, status: JobStatus) -> None:
        """Set a final status (caller holds the lock)."""
        record.status = status
        record.scheduled_for = None
        record.finished_at = self.clock.now()
        record.history.job_ended(status, record.finished_at)
