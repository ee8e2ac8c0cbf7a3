"""Waiting in tests: a poll with a deadline, never a bare sleep."""

from __future__ import annotations

import time
from collections.abc import Callable


def eventually(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll `condition` until it holds; `TimeoutError` after `timeout` real seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        time.sleep(0.02)
