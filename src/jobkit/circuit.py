"""A circuit breaker: after a failure, skip a sick server at once until a cool-down ends,
then let one caller probe it again."""

from __future__ import annotations

import threading
import time


class CircuitBreaker:
    """Closed (calls go through) → open (calls skipped) → half-open (one probe) → closed.

    Thread-safe. `allow()` is what a caller asks before trying; `success()` / `failure()`
    is what it reports after. A probe that reports nothing within `probe_timeout` seconds
    (default: the cool-down) is taken for lost, so the next caller probes instead: a probe
    cut short, or run on a thread or loop that went away, cannot keep the circuit open.
    """

    def __init__(self, cool_down: float = 5.0, *, probe_timeout: float | None = None) -> None:
        self.cool_down = cool_down
        self.probe_timeout = cool_down if probe_timeout is None else probe_timeout
        self._lock = threading.Lock()
        self._open_until: float | None = None
        self._probe_until: float | None = None  # a probe is running until then, at most
        self.last_failure = ""

    @property
    def is_open(self) -> bool:
        return self._open_until is not None

    def allow(self) -> bool:
        with self._lock:
            if self._open_until is None:
                return True
            now = time.monotonic()
            if now < self._open_until or (
                self._probe_until is not None and now < self._probe_until
            ):
                return False
            # half-open: this caller probes, the others keep skipping
            self._probe_until = now + self.probe_timeout
            return True

    def success(self) -> None:
        with self._lock:
            self._open_until, self._probe_until, self.last_failure = None, None, ""

    def failure(self, why: str) -> None:
        with self._lock:
            self._open_until = time.monotonic() + self.cool_down
            self._probe_until = None
            self.last_failure = why
