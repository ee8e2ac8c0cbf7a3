"""Clocks: where an engine reads the time and waits for it.

Engines take a clock instead of calling `datetime.now` and `asyncio.sleep`, so a test can
move time forward by hand (`ManualClock.advance`) and durable sleeps, delays and retry
backoff complete without waiting.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

from jobkit.durations import Duration, to_timedelta


@runtime_checkable
class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware (UTC)."""
        ...

    async def sleep_until(self, when: datetime) -> None:
        """Return once `now() >= when`."""
        ...


class SystemClock:
    """Wall-clock time and real waiting."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep_until(self, when: datetime) -> None:
        remaining = (when - self.now()).total_seconds()
        if remaining > 0:
            await asyncio.sleep(remaining)


class ManualClock:
    """Time that moves only when `advance` is called; safe to drive from another thread.

    Sleepers on any event loop wake as soon as an `advance` carries time past their
    deadline, in deadline order.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime.now(UTC)
        self._lock = threading.Lock()
        self._sleepers: list[tuple[datetime, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, delta: Duration) -> datetime:
        """Move time forward by `delta` and wake every sleeper now due; returns the new now."""
        with self._lock:
            self._now += to_timedelta(delta)
            now = self._now
            due = sorted((s for s in self._sleepers if s[0] <= now), key=lambda s: s[0])
            self._sleepers = [s for s in self._sleepers if s[0] > now]
        for _, loop, future in due:
            loop.call_soon_threadsafe(_resolve, future)
        return now

    def next_deadline(self) -> datetime | None:
        """The earliest time a sleeper waits for, or None when nobody sleeps."""
        with self._lock:
            return min((s[0] for s in self._sleepers), default=None)

    async def sleep_until(self, when: datetime) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        entry = (when, loop, future)
        with self._lock:
            if when <= self._now:
                return
            self._sleepers.append(entry)
        try:
            await future
        finally:
            with self._lock:
                if entry in self._sleepers:
                    self._sleepers.remove(entry)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def sleep_for(clock: Clock, duration: Duration) -> None:
    await clock.sleep_until(clock.now() + to_timedelta(duration))


ZERO = timedelta(0)
