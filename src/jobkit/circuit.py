"""A circuit breaker: after a failure, skip a sick server at once until a cool-down ends,
then let one caller probe it again."""

from __future__ import annotations

import threading
import time


class CircuitBreaker:
    """Closed (calls go through) → open (calls skipped) → half-open (one probe) → closed.

    Thread-safe. `allow()` is what a caller asks before trying; `success()` / `failure()`
    is what it reports after.
    """

    def __init__(self, cool_down: float = 5.0) -> None:
        self.cool_down = cool_down
        self._lock = threading.Lock()
        self._open_until: float | None = None
        self._probing = False
        self.last_failure = ""

    @property
    def is_open(self) -> bool:
        return self._open_until is not None

    def allow(self) -> bool:
        with self._lock:
            if self._open_until is None:
                return True
            if time.monotonic() < self._open_until or self._probing:
                return False
            self._probing = True  # half-open: this caller probes, the others keep skipping
            return True

    def success(self) -> None:
        with self._lock:
            self._open_until, self._probing, self.last_failure = None, False, ""

    def failure(self, why: str) -> None:
        with self._lock:
            self._open_until = time.monotonic() + self.cool_down
            self._probing = False
            self.last_failure = why
