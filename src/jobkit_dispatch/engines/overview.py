"""What an engine may tell an operator at a glance: its queues, workers, throughput, health.

An optional capability (`supports_overview` on the engine, the `SummarisesJobs` Protocol
beside it), read by the dashboard's overview page and `jobkit_dispatch.overview()`. Every
figure is bounded in work whatever the number of jobs the engine holds: counts of indexes
and registries, never a scan of jobs.

**Why jobs ran where they did.** An engine that is tried before others counts the
dispatches it turned away, by the kind of reason (`reason_kind`: `no-live-worker`,
`redis-unhealthy`, `pickup-timeout`, …) when it can still write them down; the operator
view sets them beside what each engine accepted in the same window, so the share of jobs
that fell back, and why, reads off one page. A fallback the first engine could not record
(its server was down) still shows, as the difference between what the later engine
accepted and what was recorded as turned away.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

OPEN_STATE = "open"
"""The state key of jobs that have not ended, for an engine that cannot tell queued,
scheduled, running and sleeping apart cheaply (Temporal's visibility says "Running")."""

_KNOWN_REASONS = frozenset(
    {
        "no-live-worker",
        "redis-unhealthy",
        "pickup-timeout",
        "rq-disabled",
        "forced",
    }
)


def reason_kind(reason: str) -> str:
    """The kind of a dispatch reason: its first word (`no-live-worker: default` →
    `no-live-worker`), for labels and tallies that must stay few; "other" for the rest."""
    head = reason.split(":", 1)[0].split(" ", 1)[0].strip()
    if head in _KNOWN_REASONS or head.startswith("JOBKIT_ENGINE="):
        return head
    return "other"


@dataclass(frozen=True)
class QueueSummary:
    """One queue on one engine now.

    `states`: job counts by state, keyed by `JobStatus` value (`"queued"`, `"failed"`, …)
    or `OPEN_STATE` where the engine cannot split open jobs; ended jobs count until they
    expire. `live_workers`: workers serving the queue now, None when the engine cannot
    tell.
    """

    queue: str
    states: Mapping[str, int]
    live_workers: int | None


@dataclass(frozen=True)
class ThroughputBucket:
    """Jobs that ended in [start, start + width): how many succeeded, how many failed."""

    start: datetime
    succeeded: int
    failed: int


@dataclass(frozen=True)
class EngineSummary:
    """One engine at a glance, over the window asked for.

    `healthy` and `health`: whether its server answered, and a line that says what it is
    (address without credentials, version, latency) or why not. `accepted`: jobs it took
    in the window (None when it cannot count them); `passed_over`: dispatches it turned
    away in the window, by `reason_kind`.
    """

    engine: str
    healthy: bool
    health: str
    queues: tuple[QueueSummary, ...] = ()
    throughput: tuple[ThroughputBucket, ...] = ()
    accepted: int | None = None
    passed_over: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SummaryQuery:
    """What to summarise: `queues` (every known one when empty), and the throughput
    window ending `now`, cut into `buckets` buckets of equal width."""

    queues: tuple[str, ...]
    now: datetime
    window: timedelta = timedelta(hours=1)
    buckets: int = 12

    @property
    def width(self) -> timedelta:
        return self.window / self.buckets

    def bucket_starts(self) -> list[datetime]:
        """The start of each bucket, oldest first."""
        first = self.now - self.window
        return [first + i * self.width for i in range(self.buckets)]


@runtime_checkable
class SummarisesJobs(Protocol):
    """`supports_overview`: the engine summarises itself for the overview page."""

    async def summarise(self, query: SummaryQuery) -> EngineSummary:
        """The engine now. An engine whose server does not answer returns
        `healthy=False` with the reason in `health`, rather than raising."""
        ...
