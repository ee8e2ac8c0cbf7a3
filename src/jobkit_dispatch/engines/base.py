"""The engine boundary: one small Protocol, and defaults for what most engines share.

An engine enqueues a `JobRequest` under its id, reports a job as `JobInfo`, and cancels
it. What an engine can honour is declared as capability attributes, each a promise the
conformance suite checks; the dispatcher reads them before anything is enqueued.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar, Protocol, runtime_checkable

from jobkit_engine import JobInfo


@dataclass(frozen=True)
class JobRequest:
    """A validated job, ready for an engine. `payload` is JSON data."""

    job_id: str
    job_name: str
    payload: Any
    queue: str
    max_attempts: int = 1
    delay: timedelta | None = None  # relative to the engine's clock at enqueue time
    run_at: datetime | None = None  # absolute; at most one of delay / run_at is set
    reason: str = ""
    idempotency_key: str | None = None
    # Engines tried before this one that may hold a copy of the job under its id (see
    # docs/dispatch.md, "Exactly once across engines"). `fence`: this dispatch's enqueue
    # there may have been applied though its reply was lost; an engine that can settle
    # with such a copy settles before the job runs (Temporal: a fence against RQ).
    # `hand_over`: for an idempotency key, engines that did not take the job, where an
    # earlier dispatch of the key may have put it; the job runs at once, and the engine
    # tells them it has the job once they answer (Temporal: a fence workflow).
    fence: frozenset[str] = frozenset()
    hand_over: frozenset[str] = frozenset()

    def due_at(self, now: datetime) -> datetime | None:
        """When the job may first run, or None for "now"."""
        if self.run_at is not None:
            return self.run_at
        if self.delay is not None:
            return now + self.delay
        return None


@runtime_checkable
class Engine(Protocol):
    """What the dispatcher needs from an engine."""

    name: str
    supports_delay: bool  # honours delay= and at=: the job runs no earlier than asked
    supports_durable_sleep: bool  # a long step.sleep frees the worker and resumes the job
    supports_cancel_running: bool  # cancel_job interrupts a job that is running
    supports_progress: bool  # report_progress is visible through get_job while running
    supports_pickup_confirmation: bool  # implements `ConfirmsPickup`: withdraws untaken jobs

    def availability(self, request: JobRequest) -> str | None:
        """Why this engine cannot take `request` right now (e.g. "no-live-worker: default"),
        or None. Called before every enqueue, so it must be cheap: cache what it learns."""
        ...

    def enqueue(self, request: JobRequest) -> bool:
        """Store and queue the job; False (and no change) when its id already exists.

        Raises `EngineUnavailableError` when the engine cannot take jobs right now.
        """
        ...

    async def aenqueue(self, request: JobRequest) -> bool: ...

    def get(self, job_id: str) -> JobInfo | None:
        """The job's state, or None if this engine has no job with that id."""
        ...

    async def aget(self, job_id: str) -> JobInfo | None: ...

    def cancel(self, job_id: str) -> bool:
        """Cancel the job: True when it is (or will shortly be) cancelled, False when it
        had already finished. Raises `JobNotFoundError` for an unknown id."""
        ...

    async def acancel(self, job_id: str) -> bool: ...

    def close(self) -> None:
        """Release connections and background threads."""
        ...


@runtime_checkable
class ConfirmsPickup(Protocol):
    """An engine that can tell whether a worker took a job, and take it back if not."""

    def confirm_pickup(self, job_id: str, timeout: float) -> bool:
        """Wait up to `timeout` seconds for a worker to start the job. True: a worker has
        it (it stays). False: nobody took it and it was withdrawn atomically — it will never
        run on this engine."""
        ...


@dataclass(frozen=True)
class Fenced:
    """Which engine runs a job that two engines held, and the reason stored with it."""

    engine: str
    reason: str


@runtime_checkable
class Fences(Protocol):
    """An engine that can hand a job over to another engine holding a copy of it."""

    def fence(self, job_id: str, engine: str, reason: str) -> Fenced:
        """Make sure only one engine runs the job: unless this engine already started it
        (then it keeps it), it will never run it, and it remembers that `engine` has it.
        Raises `EngineUnavailableError` when it cannot answer now."""
        ...

    def holder(self, job_id: str) -> Fenced | None:
        """What `fence` would keep, changing nothing: this engine, when it started the job;
        the engine its marker names, when the job was handed over; None when it has no copy
        or one it never started. Raises `EngineUnavailableError` when it cannot answer."""
        ...


class EngineBase(ABC):
    """Defaults: the async twins run the sync methods in a thread; nothing to close.

    An engine whose client is async-native overrides the `a*` methods instead, and derives
    the sync ones from them.
    """

    name: ClassVar[str] = "base"
    supports_delay: ClassVar[bool] = False
    supports_durable_sleep: ClassVar[bool] = False
    supports_cancel_running: ClassVar[bool] = False
    supports_progress: ClassVar[bool] = False
    supports_pickup_confirmation: ClassVar[bool] = False
    # Operator capabilities (`engines/recovery.py`), optional: an engine that is no
    # `EngineBase` may leave them out, and `has_capability` reads them as False.
    supports_listing: ClassVar[bool] = False  # implements `ListsJobs`: list_jobs, describe
    supports_retry: ClassVar[bool] = False  # implements `RetriesJobs`: retry, from a step
    supports_purge: ClassVar[bool] = False  # implements `PurgesJobs`: purge ended jobs
    # implements `SummarisesJobs` (`engines/overview.py`): queues, workers, throughput, health
    supports_overview: ClassVar[bool] = False

    def availability(self, request: JobRequest) -> str | None:
        return None

    async def aavailability(self, request: JobRequest) -> str | None:
        """`availability` for a running loop, which it must never block: in a thread,
        unless `availability` is this default. An engine whose answer usually comes from
        memory overrides it, going to a thread only when it must ask its server."""
        if type(self).availability is EngineBase.availability:
            return None
        return await asyncio.to_thread(self.availability, request)

    @abstractmethod
    def enqueue(self, request: JobRequest) -> bool: ...

    @abstractmethod
    def get(self, job_id: str) -> JobInfo | None: ...

    @abstractmethod
    def cancel(self, job_id: str) -> bool: ...

    async def aenqueue(self, request: JobRequest) -> bool:
        return await asyncio.to_thread(self.enqueue, request)

    async def aget(self, job_id: str) -> JobInfo | None:
        return await asyncio.to_thread(self.get, job_id)

    async def acancel(self, job_id: str) -> bool:
        return await asyncio.to_thread(self.cancel, job_id)

    def close(self) -> None:
        return None


def has_capability(engine: Engine, capability: str) -> bool:
    """Whether `engine` declares `capability` (e.g. "supports_listing"); an attribute it
    does not have counts as False, so engines written before a capability keep working."""
    return bool(getattr(engine, capability, False))


async def aavailability(engine: Engine, request: JobRequest) -> str | None:
    """`engine.availability(request)` without blocking the running loop: the engine's own
    `aavailability` (`EngineBase` has one) when it has it, else in a thread."""
    check = getattr(engine, "aavailability", None)
    if check is not None:
        return await check(request)
    return await asyncio.to_thread(engine.availability, request)
