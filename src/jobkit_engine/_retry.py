"""The retry policy of a job."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta

from jobkit.durations import Duration, to_timedelta


@dataclass(frozen=True, init=False)
class Retry:
    """How often a job is attempted and how long to wait between attempts.

    The wait after the n-th failed attempt is `initial_delay * backoff ** (n - 1)`, capped
    at `max_delay`, then shortened at random by up to `jitter` (a fraction) so that jobs
    that failed together do not all come back together.
    """

    attempts: int
    backoff: float
    initial_delay: timedelta
    max_delay: timedelta
    jitter: float

    def __init__(
        self,
        attempts: int = 3,
        backoff: float = 2.0,
        *,
        initial_delay: Duration = 1.0,
        max_delay: Duration = timedelta(minutes=10),
        jitter: float = 0.25,
    ) -> None:
        if attempts < 1:
            raise ValueError(f"Retry(attempts=...) must be >= 1, got {attempts}")
        if backoff < 1:
            raise ValueError(f"Retry(backoff=...) must be >= 1, got {backoff}")
        if not 0 <= jitter <= 1:
            raise ValueError(f"Retry(jitter=...) must be within [0, 1], got {jitter}")
        object.__setattr__(self, "attempts", attempts)
        object.__setattr__(self, "backoff", float(backoff))
        object.__setattr__(self, "initial_delay", to_timedelta(initial_delay))
        object.__setattr__(self, "max_delay", to_timedelta(max_delay))
        object.__setattr__(self, "jitter", float(jitter))

    def delay_after(self, attempt: int, rng: random.Random | None = None) -> timedelta | None:
        """The wait before the next attempt once `attempt` (1-based) failed; None when spent."""
        if attempt >= self.attempts:
            return None
        base = self.initial_delay.total_seconds() * self.backoff ** (attempt - 1)
        capped = min(base, self.max_delay.total_seconds())
        shortened = capped * (1 - self.jitter * (rng or random).random())
        return timedelta(seconds=shortened)


NO_RETRY = Retry(attempts=1)
