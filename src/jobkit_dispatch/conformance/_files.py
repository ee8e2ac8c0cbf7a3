"""Signals between a test and a job that work across processes: files in a shared dir.

A worker may be another process (RQ) or another thread (inline, Temporal); plain files
are the one channel all of them share. Each tally line is one execution of something.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path


def tally(workdir: str, name: str) -> None:
    """Count one execution of `name` (an O_APPEND write of one line is atomic)."""
    with open(Path(workdir, f"{name}.tally"), "a") as f:
        f.write(f"{time.time()}\n")


def count(workdir: str, name: str) -> int:
    path = Path(workdir, f"{name}.tally")
    return len(path.read_text().splitlines()) if path.exists() else 0


def open_gate(workdir: str, gate: str) -> None:
    Path(workdir, f"{gate}.gate").touch()


async def wait_for_gate(workdir: str, gate: str, limit: float = 60.0) -> bool:
    """Wait (cancellably) until the test opens `gate`; False if it never does."""
    path = Path(workdir, f"{gate}.gate")
    deadline = time.monotonic() + limit
    while not path.exists():  # noqa: ASYNC240 - one stat per poll
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def gate_is_open(workdir: str, gate: str) -> bool:
    return Path(workdir, f"{gate}.gate").exists()
