"""Temporal under operations: a burst of dispatches on a busy server, and a worker killed
mid-step, against a real dev server and real `jobkit worker --engine temporal` processes.

- A fallback burst (500 dispatches at once) to a server that gets the CPU a fifth of the
  time: every dispatch succeeds and every job runs (before: 161 of 500 raised `Timeout
  expired`).
- A start that the server applied but whose reply was lost is retried and counts as
  created by its dispatch, not as a job that existed.
- A silent server is not waited for: a burst fails after one RPC timeout.
- A worker killed with SIGKILL while a step runs: another worker finishes the job within
  30 s of the kill (before: 36 s), and the step ran at most twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobkit_dispatch import adispatch_job, dispatch_job, get_job
from jobkit_dispatch.conformance._files import count, open_gate
from jobkit_dispatch.engines import JobRequest
from jobkit_dispatch.testing import use_engine, wait_for_job
from jobkit_dispatch.testing.temporal_server import TemporalDevServer
from jobkit_engine import JobStatus
from tests.temporal_ops_jobs import BURST_QUEUE, KILL_QUEUE, echo_job, hold_job
from tests.waiting import eventually

pytest.importorskip("temporalio")

from temporalio.service import RPCError, RPCStatusCode

from jobkit.errors import EngineUnavailableError
from jobkit_dispatch.engines.temporal import TemporalEngine

ROOT = Path(__file__).resolve().parents[1]
BURST = 500


@pytest.fixture
def prefix() -> str:
    return f"ops-{os.getpid()}-{time.monotonic_ns()}-"


@pytest.fixture
def engine(jobkit_temporal_server: TemporalDevServer, prefix: str) -> Iterator[TemporalEngine]:
    engine = TemporalEngine(jobkit_temporal_server.address, task_queue_prefix=prefix)
    with use_engine(engine):
        yield engine
    engine.close()


class WorkerProcess:
    """`jobkit worker --engine temporal` for one queue, its output read as it comes."""

    def __init__(self, address: str, prefix: str, queue: str) -> None:
        env = {
            **os.environ,
            "JOBKIT_TEMPORAL_ADDRESS": address,
            "JOBKIT_TEMPORAL_TASK_QUEUE_PREFIX": prefix,
        }
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "jobkit_dispatch.cli", "worker", "--engine", "temporal"),
                *("--queue", queue, "--import", "tests.temporal_ops_jobs"),
            ],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self) -> None:
        assert self.process.stdout is not None
        self.lines.extend(self.process.stdout)

    def wait_serving(self) -> None:
        eventually(lambda: any("on Temporal at" in line for line in self.lines), 60)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.wait(30)


@contextlib.contextmanager
def workers(
    server: TemporalDevServer, prefix: str, queue: str, n: int
) -> Iterator[list[WorkerProcess]]:
    started = [WorkerProcess(server.address, prefix, queue) for _ in range(n)]
    try:
        for worker in started:
            worker.wait_serving()
        yield started
    finally:
        for worker in started:
            worker.stop()


@contextlib.contextmanager
def throttled(pid: int, *, run: float = 0.05, pause: float = 0.2) -> Iterator[None]:
    """The process runs `run` seconds out of every `run + pause`: a server busy elsewhere."""
    done = threading.Event()

    def duty_cycle() -> None:
        while not done.is_set():
            os.kill(pid, signal.SIGSTOP)
            done.wait(pause)
            os.kill(pid, signal.SIGCONT)
            done.wait(run)

    thread = threading.Thread(target=duty_cycle, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        os.kill(pid, signal.SIGCONT)


# -- a burst -------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_burst_of_dispatches_to_a_busy_server_all_get_through_and_run(
    jobkit_temporal_server: TemporalDevServer, engine: TemporalEngine, prefix: str
) -> None:
    server = jobkit_temporal_server
    assert server.pid is not None
    dispatch_job(echo_job, {"n": -1})  # connected before the clock starts

    async def burst() -> list[Any]:
        return await asyncio.gather(
            *(adispatch_job(echo_job, {"n": n}) for n in range(BURST)), return_exceptions=True
        )

    with workers(server, prefix, BURST_QUEUE, 1):
        with throttled(server.pid):
            started = time.monotonic()
            results = asyncio.run(burst())
            took = time.monotonic() - started
        errors = [r for r in results if isinstance(r, BaseException)]
        assert errors == [], f"{len(errors)} of {BURST} dispatches failed, first: {errors[0]}"
        assert all(d.engine == "temporal" and d.created for d in results)
        deadline = time.monotonic() + 60
        infos = [
            wait_for_job(d.job_id, timeout=max(0.1, deadline - time.monotonic())) for d in results
        ]
    assert [info.status for info in infos] == [JobStatus.SUCCEEDED] * BURST
    assert [info.result for info in infos] == list(range(BURST))
    print(f"{BURST} dispatches to a throttled server in {took:.1f} s")


def test_a_start_applied_but_unanswered_counts_as_created_by_its_dispatch(
    engine: TemporalEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = engine._loop.run(engine.client(), 10)
    start_workflow = client.start_workflow
    attempts: list[str] = []

    async def loses_the_first_reply(*args: Any, **kwargs: Any) -> Any:
        attempts.append(kwargs["id"])
        handle = await start_workflow(*args, **kwargs)  # applied by the server
        if len(attempts) == 1:
            await handle.result()  # the job ran meanwhile, rewriting its memo
            raise RPCError("Timeout expired", RPCStatusCode.CANCELLED, b"")
        return handle

    with engine.start_worker([BURST_QUEUE]):
        dispatch_job(echo_job, {"n": 0})  # the server answers starts
        monkeypatch.setattr(client, "start_workflow", loses_the_first_reply)
        d = dispatch_job(echo_job, {"n": 1})
        assert attempts == [d.job_id, d.job_id]  # tried again, and met its own workflow
        assert d.created
        # A later start of that id meets a workflow that it did not start.
        again = engine.enqueue(JobRequest(d.job_id, echo_job.name, {"n": 1}, BURST_QUEUE))
        assert again is False and len(attempts) == 3
    info = get_job(d.job_id)
    assert (info.status, info.result) == (JobStatus.SUCCEEDED, 1)


def test_a_silent_server_fails_a_burst_after_one_rpc_timeout(
    jobkit_temporal_server: TemporalDevServer, prefix: str
) -> None:
    server = jobkit_temporal_server
    assert server.pid is not None
    engine = TemporalEngine(
        server.address, task_queue_prefix=prefix, rpc_timeout=1.0, max_starts_in_flight=4
    )
    try:
        engine.enqueue(JobRequest("silent-probe", echo_job.name, {"n": 0}, BURST_QUEUE))

        async def burst() -> list[Any]:
            return await asyncio.gather(
                *(
                    engine.aenqueue(JobRequest(f"silent-{n}", echo_job.name, {"n": n}, BURST_QUEUE))
                    for n in range(40)
                ),
                return_exceptions=True,
            )

        with server.paused():
            started = time.monotonic()
            results = asyncio.run(burst())
            took = time.monotonic() - started
    finally:
        engine.close()
    assert all(isinstance(r, EngineUnavailableError) for r in results), results
    # Ten rounds of four starts would take ten RPC timeouts; the start timeout, 30 s.
    assert took < 5, took


# -- a killed worker -----------------------------------------------------------------------


@pytest.mark.slow
def test_a_job_whose_worker_is_killed_mid_step_is_finished_by_another_within_30_s(
    jobkit_temporal_server: TemporalDevServer, engine: TemporalEngine, prefix: str, workdir: str
) -> None:
    with workers(jobkit_temporal_server, prefix, KILL_QUEUE, 2) as (first, second):
        d = dispatch_job(hold_job, {"workdir": workdir})
        eventually(lambda: count(workdir, "hold") == 1, 30)
        killed, other = (first, second) if count(workdir, f"hold-{first.pid}") else (second, first)
        os.kill(killed.pid, signal.SIGKILL)
        stopped = time.monotonic()
        open_gate(workdir, "release")  # the step's next run ends at once
        info = wait_for_job(d.job_id, timeout=60)
        recovery = time.monotonic() - stopped
    print(f"recovered {recovery:.1f} s after the kill")
    assert info.status == JobStatus.SUCCEEDED, info
    assert info.result == other.pid
    assert count(workdir, "hold") == 2  # at-least-once: the killed run, then one more
    assert count(workdir, f"hold-{other.pid}") == 1
    assert recovery < 30, f"the job was finished {recovery:.1f} s after its worker was killed"
