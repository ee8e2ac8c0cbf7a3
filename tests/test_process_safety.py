"""Dispatching from an asyncio app, from a forked child, and up to the end of a process.

- The loop: `adispatch_job`, `aget_job` and `acancel_job` never block the caller's event
  loop, the first call of a process included, while Redis hangs.
- Fork: a child forked after its parent dispatched (gunicorn `--preload`, Celery prefork)
  dispatches to both engines on connections of its own.
- Exit: a process that dispatched to Temporal ends without a fatal error or a traceback,
  with calls still in flight.

The loop and exit cases run in a fresh interpreter (`tests.process_scripts`): first calls
and interpreter exit are what they are about.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("temporalio")

from jobkit_dispatch.testing.temporal_server import TemporalDevServer

ROOT = Path(__file__).resolve().parents[1]
MAX_TICK_GAP = 0.1  # generous for a loaded 2-core machine; a blocked loop misses 0.3 s+


@contextmanager
def hung_server() -> Iterator[int]:
    """A loopback port that accepts connections and never answers: a hung Redis."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return  # the listener was closed

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        for conn in held:
            conn.close()


def run_script(name: str, env: dict[str, str], timeout: float = 60) -> tuple[Any, list[dict]]:
    """Run `tests.process_scripts <name>`; its exit status and the JSON lines it printed."""
    process = subprocess.run(
        [sys.executable, "-m", "tests.process_scripts", name],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [json.loads(line) for line in process.stdout.splitlines() if line.startswith("{")]
    return process, lines


def temporal_env(server: TemporalDevServer) -> dict[str, str]:
    """Temporal on a task queue of its own: no worker of another test picks these up."""
    return {
        "JOBKIT_TEMPORAL_ADDRESS": server.address,
        "JOBKIT_TEMPORAL_TASK_QUEUE_PREFIX": f"safety-{uuid.uuid4().hex[:8]}-",
    }


# -- the loop --------------------------------------------------------------------------------


def test_async_calls_never_block_the_loop_while_redis_hangs(
    jobkit_temporal_server: TemporalDevServer,
) -> None:
    with hung_server() as port:
        env = {
            **temporal_env(jobkit_temporal_server),
            "JOBKIT_REDIS_URL": f"redis://127.0.0.1:{port}/0",  # the default socket timeout
        }
        process, lines = run_script("ticker", env)
    assert process.returncode == 0, process.stderr
    report = lines[0]
    # Redis hung: the jobs went to Temporal, and get/cancel found them there.
    assert report["engines"] == ["temporal", "temporal"]
    assert report["reason"].startswith("redis-unhealthy")
    assert (report["found_on"], report["cancelled"]) == ("temporal", True)
    assert report["calls_took"] > 0.5  # the calls did wait on the hung Redis meanwhile
    print(f"max tick gap {report['max_gap']:.3f}s over {report['ticks']} ticks")
    assert report["max_gap"] < MAX_TICK_GAP, report
