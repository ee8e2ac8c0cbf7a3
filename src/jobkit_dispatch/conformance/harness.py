"""What the conformance suite needs to know about an engine under test."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest

from jobkit.durations import utcnow
from jobkit_dispatch.engines import Engine
from jobkit_dispatch.engines.base import has_capability
from jobkit_dispatch.engines.inline import InlineEngine
from jobkit_dispatch.testing import advance, wait_for_job
from jobkit_engine import JobInfo, ManualClock


@dataclass
class Harness:
    """An engine plus how time works for it.

    `long_sleep` must exceed the engine's durable-sleep threshold and `short_sleep` stay
    under it. On an engine with real time, keep `long_sleep` to a few seconds: the suite
    waits it out. `timeout` bounds every wait, in real seconds. `strict` says the engine
    holds handler code outside steps to Temporal's workflow rules (Temporal itself, the
    inline engine in strict mode, an RQ worker with `JOBKIT_STRICT=1`): the portability
    tests of those rules run only then. `unknown_job_grace` is how long the engine's
    workers hand back a job they do not know before failing it (`JOBKIT_UNKNOWN_JOB_GRACE`,
    kept to a second or two in the suite; zero for an engine that runs jobs in the
    dispatching process); the suite checks the failure does not come sooner.
    """

    engine: Engine
    long_sleep: timedelta = timedelta(days=3)
    short_sleep: timedelta = timedelta(milliseconds=20)
    timeout: float = 15.0
    now: Callable[[], datetime] = field(default=utcnow)
    strict: bool = False
    unknown_job_grace: timedelta = timedelta(0)

    def advance(self, delta: timedelta) -> None:
        """Let `delta` pass for the engine (instantly on a ManualClock)."""
        advance(self.engine, delta)

    def tick(self) -> None:
        """Let the engine's clock move on, so that what happens next gets a later time than
        what happened before: a ManualClock stands still until it is advanced (here by a
        second, at once); a real clock has moved on by itself."""
        if isinstance(getattr(self.engine, "clock", None), ManualClock):
            self.advance(timedelta(seconds=1))

    def wait(self, job_id: str, until: Callable[[JobInfo], bool] | None = None) -> JobInfo:
        if until is None:
            return wait_for_job(job_id, timeout=self.timeout)
        return wait_for_job(job_id, until, timeout=self.timeout)

    @classmethod
    def inline(cls, clock: ManualClock | None = None) -> Harness:
        """The inline engine on a ManualClock, in strict mode: sleeps of days take no time."""
        clock = clock or ManualClock()
        return cls(InlineEngine(clock=clock, strict=True), now=clock.now, strict=True)


def requires(harness: Harness, capability: str) -> None:
    """Skip a test of what the engine says it cannot do (`supports_delay = False`, …).

    A declared capability is a promise the dispatcher and users rely on, so a test of it
    runs whenever the engine claims it; only an engine that disclaims it (or, for the
    optional operator capabilities, does not mention it) is excused.
    """
    if not has_capability(harness.engine, capability):
        pytest.skip(f"{harness.engine.name} does not declare {capability}")
