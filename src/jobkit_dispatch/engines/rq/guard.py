"""Keeping a worker's background loops alive through errors nobody foresaw.

A worker is four loops (fetch, heartbeats, promotion and recovery, the cancel listener).
One that dies leaves the worker half alive: heart-beating, so counted live, but never
promoting a due job again, or no longer hearing cancellations. Redis outages are expected
and ridden out by `WorkerLink`; anything else (a value in Redis no code expected, a bug)
goes to a `LoopGuard`, which logs it with its traceback — once per distinct error, so a
poison value met every round costs one log line, not a flood — and backs off before the
loop's next round, so it costs no busy loop either.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

log = logging.getLogger("jobkit.worker")

_REMEMBERED = 100  # distinct errors a guard remembers having logged


class LoopGuard:
    """The error handling of one background loop: `await failed(exc)`, then go on."""

    def __init__(
        self, loop: str, worker: str, *, first_delay: float = 0.1, max_delay: float = 30.0
    ) -> None:
        self.loop = loop
        self.worker = worker
        self.errors = 0  # unexpected errors caught, logged or not
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._delay = first_delay
        self._logged: OrderedDict[tuple[str, str], None] = OrderedDict()

    async def failed(self, exc: Exception) -> None:
        """Log `exc` if this loop has not logged the same error yet, then wait (doubling
        from `first_delay` up to `max_delay` while errors follow each other)."""
        self.errors += 1
        key = (type(exc).__name__, str(exc)[:200])
        if key in self._logged:
            self._logged.move_to_end(key)
            log.debug("worker %s: %s loop failed again: %r", self.worker, self.loop, exc)
        else:
            self._logged[key] = None
            if len(self._logged) > _REMEMBERED:
                self._logged.popitem(last=False)
            log.error(
                "worker %s: unexpected error in the %s loop; it goes on (the same error is "
                "not logged again)",
                self.worker,
                self.loop,
                exc_info=exc,
            )
        await asyncio.sleep(self._delay)
        self._delay = min(self._delay * 2, self._max_delay)

    def ok(self) -> None:
        """A round went through: the next error waits `first_delay` again."""
        self._delay = self._first_delay
