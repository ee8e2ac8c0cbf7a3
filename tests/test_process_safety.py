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

import asyncio
import json
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("temporalio")

from jobkit import JobkitSettings
from jobkit_dispatch import Dispatcher, set_dispatcher
from jobkit_dispatch.conformance._files import count
from jobkit_dispatch.engines.temporal import TemporalEngine
from jobkit_dispatch.testing import RedisServer, wait_for_job
from jobkit_dispatch.testing.hung_server import HungServer
from jobkit_dispatch.testing.rq_worker import WorkerProcess
from jobkit_dispatch.testing.temporal_server import TemporalDevServer
from tests import rq_jobs

ROOT = Path(__file__).resolve().parents[1]
# A loop blocked on the hung Redis misses the whole socket timeout, 1.5 s here. A loop that
# is not blocked still misses ticks when a loaded 2-core machine does not run the process:
# up to ~0.4 s at load 10 (usually under 0.07 s). The threshold separates the two.
REDIS_SOCKET_TIMEOUT = 1.5
MAX_TICK_GAP = 0.5


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
    with HungServer() as redis:
        env = {
            **temporal_env(jobkit_temporal_server),
            "JOBKIT_REDIS_URL": redis.url,
            "JOBKIT_REDIS_SOCKET_TIMEOUT": str(REDIS_SOCKET_TIMEOUT),
        }
        process, lines = run_script("ticker", env)
    assert process.returncode == 0, process.stderr
    report = lines[0]
    # Redis hung: the jobs went to Temporal, and get/cancel found them there.
    assert report["engines"] == ["temporal", "temporal"]
    assert report["reason"].startswith("redis-unhealthy")
    assert (report["found_on"], report["cancelled"]) == ("temporal", True)
    assert report["calls_took"] > REDIS_SOCKET_TIMEOUT  # they did wait on the hung Redis
    print(f"max tick gap {report['max_gap']:.3f}s over {report['ticks']} ticks")
    assert report["max_gap"] < MAX_TICK_GAP, report


# -- fork ------------------------------------------------------------------------------------


@pytest.fixture
def both(
    jobkit_temporal_server: TemporalDevServer, tmp_path: Path
) -> Iterator[tuple[Dispatcher, Dispatcher]]:
    """The process-wide dispatcher over Redis with an RQ worker, and one forced onto its
    Temporal engine, which serves the queue from this process."""
    server = RedisServer().start()
    settings = JobkitSettings(
        redis_url=server.url,
        temporal_address=jobkit_temporal_server.address,
        temporal_task_queue_prefix=f"fork-{uuid.uuid4().hex[:8]}-",
        worker_heartbeat=0.3,
    )
    dispatcher = Dispatcher(settings=settings)
    temporal = dispatcher.engine("temporal")
    assert isinstance(temporal, TemporalEngine)
    previous = set_dispatcher(dispatcher)
    rq_worker = WorkerProcess(
        server.url,
        ["rq-messages"],
        ["tests.rq_jobs"],
        env={"JOBKIT_WORKER_HEARTBEAT": "0.3"},
        log_path=tmp_path / "rq.log",
    ).start()
    try:
        with temporal.start_worker(["rq-messages"]):
            yield dispatcher, Dispatcher(temporal, settings=settings)
    finally:
        rq_worker.stop()
        set_dispatcher(previous)
        dispatcher.close()
        server.stop()


def run_jobs(rq: Dispatcher, temporal: Dispatcher, workdir: str, who: str) -> dict[str, Any]:
    """One job on each engine, sync, and one on Temporal through `adispatch`; for each,
    where it ran, how it ended and how long that took."""

    def one(label: str, dispatch: Any) -> None:
        started = time.monotonic()
        try:
            d = dispatch({"workdir": workdir, "name": f"{who}-{label}"})
            info = wait_for_job(d.job_id, timeout=15)
            outcome = [d.engine, str(info.status)]
        except Exception as exc:  # reported to the parent, which asserts on it
            outcome = [label, f"{type(exc).__name__}: {exc}"]
        results[label] = [*outcome, round(time.monotonic() - started, 3)]

    results: dict[str, Any] = {}
    one("rq", lambda p: rq.dispatch(rq_jobs.count_once, p))
    one("temporal", lambda p: temporal.dispatch(rq_jobs.count_once, p))
    one("temporal-async", lambda p: asyncio.run(temporal.adispatch(rq_jobs.count_once, p)))
    return results


def in_forked_child(work: Any, deadline: float) -> dict[str, Any]:
    """`work()` in a child forked from this process; its JSON result. The child always
    ends with `os._exit`, and is killed if it has not answered within `deadline`."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read_end)
            result = work()
            os.write(write_end, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], deadline)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"the forked child did not answer within {deadline}s")
        chunks = []
        while chunk := os.read(read_end, 65536):
            chunks.append(chunk)
        return json.loads(b"".join(chunks) or b"{}")
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)


def test_a_forked_child_dispatches_to_both_engines(
    both: tuple[Dispatcher, Dispatcher], tmp_path: Path
) -> None:
    rq, temporal = both
    workdir = str(tmp_path)
    # The parent dispatches first: its Redis pool, loop thread and Temporal client exist.
    before = run_jobs(rq, temporal, workdir, "parent")
    assert {k: v[:2] for k, v in before.items()} == EVERY_ENGINE_SUCCEEDED, before
    child = in_forked_child(lambda: run_jobs(rq, temporal, workdir, "child"), deadline=40)
    print(f"in the forked child: {child}")
    assert {k: v[:2] for k, v in child.items()} == EVERY_ENGINE_SUCCEEDED, child
    # The parent's own connections and threads were left alone: it goes on as before.
    after = run_jobs(rq, temporal, workdir, "after")
    assert {k: v[:2] for k, v in after.items()} == EVERY_ENGINE_SUCCEEDED, after
    for who in ("parent", "child", "after"):
        for label in ("rq", "temporal", "temporal-async"):
            assert count(workdir, f"{who}-{label}") == 1, (who, label)


EVERY_ENGINE_SUCCEEDED = {
    "rq": ["rq", "succeeded"],
    "temporal": ["temporal", "succeeded"],
    "temporal-async": ["temporal", "succeeded"],
}


# -- exit ------------------------------------------------------------------------------------

EXIT_ERRORS = ("Fatal Python error", "Event loop is closed", "Traceback", "Segmentation")


@pytest.mark.parametrize("program", ["exit-sync", "exit-async", "close-sync"])
def test_a_process_that_dispatched_to_temporal_exits_cleanly_with_calls_in_flight(
    jobkit_temporal_server: TemporalDevServer, program: str
) -> None:
    """Threads (or tasks) keep calling Temporal while the process exits (or closes the
    dispatcher): temporalio's threads must not answer into a closed loop or a finalizing
    interpreter."""
    env = {**temporal_env(jobkit_temporal_server), "JOBKIT_ENGINE": "temporal"}
    process, lines = run_script(program, env)
    assert process.returncode == 0, process.stderr
    assert not [e for e in EXIT_ERRORS if e in process.stderr], process.stderr
    result, at_exit = lines
    assert result["engine"] == "temporal" and result["calls"] >= 4, result
    # Closing waits for the calls in flight (or cancels them): none is left hanging.
    assert result.get("resumed_after_close", 0) < 4, result
    # The engine's loop had stopped, its calls over, before the interpreter finalized.
    assert at_exit == {"temporal_threads_at_exit": []}, at_exit
