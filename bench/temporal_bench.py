"""jobkit-on-Temporal against a plain temporalio workflow, on one fresh dev server.

    python bench/temporal_bench.py [--latency-runs 300] [--jobs 500] [--rounds 3]

Both sides run one step: jobkit a job whose handler runs one `step.run`, plain temporalio
a workflow that executes one activity. Workers, client, event loop and options (pydantic
data converter, sandboxed workflows with the workflow module passed through, eager
workflow start) are the same for both. Measures, for each side:

- dispatch→result latency p50/p99, one job at a time, the result awaited with Temporal's
  long poll (jobkit also: polling `get_job` every 2 ms, which is what an app does);
- throughput of `--jobs` jobs dispatched at once and awaited (median of `--rounds`), with
  the queue's concurrency (the plain worker's `max_concurrent_activities`) at 100, where
  jobkit's jobs also wait for a slot, and at `--jobs`; and how many of those jobs failed
  (a dispatch that raised: the burst goes on, and its rate counts the jobs that ran).

Prints a table and writes it to bench/results/temporal.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from jobkit import QueueSpec, default_queues
from jobkit_dispatch import Dispatcher
from jobkit_dispatch.engines.temporal import TemporalEngine
from jobkit_dispatch.engines.temporal.worker import serve
from jobkit_dispatch.testing.temporal_server import TemporalDevServer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from temporal_tasks import QUEUE, PlainOneStep, one_step, plain_echo  # noqa: E402

PLAIN_QUEUE = "plain-bench"
WARM_UP = 20
logging.getLogger("temporalio").setLevel(logging.ERROR)


# -- measuring -----------------------------------------------------------------------------


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered) * 1000, p99 * 1000


async def latencies(
    runs: int, *sides: Callable[[int], Awaitable[object]]
) -> list[tuple[float, float]]:
    """p50/p99 of each side, one job at a time, the sides taking turns (so that a drift
    of the server over the run weighs on all of them alike)."""
    samples: list[list[float]] = [[] for _ in sides]
    for i in range(WARM_UP + runs):
        for side, taken in zip(sides, samples, strict=True):
            started = time.perf_counter()
            await side(i)
            if i >= WARM_UP:
                taken.append(time.perf_counter() - started)
    return [percentiles(taken) for taken in samples]


async def throughput(
    jobs: int, rounds: int, *sides: Callable[[int], Awaitable[object]]
) -> list[tuple[float, int]]:
    """Median jobs/s of each side over `rounds` bursts of `jobs` jobs, the sides taking
    turns; the dev server is the bottleneck here and its pace varies from burst to burst.
    Also the number of jobs of all its bursts that failed (a dispatch that raised): the
    rate counts only the jobs that ran."""
    rates: list[list[float]] = [[] for _ in sides]
    failed = [0 for _ in sides]
    for _ in range(rounds):
        for i, (side, taken) in enumerate(zip(sides, rates, strict=True)):
            started = time.perf_counter()
            outcomes = await asyncio.gather(*(side(n) for n in range(jobs)), return_exceptions=True)
            errors = [o for o in outcomes if isinstance(o, BaseException)]
            taken.append((jobs - len(errors)) / (time.perf_counter() - started))
            failed[i] += len(errors)
            if errors:
                print(f"{len(errors)} of {jobs} failed, e.g. {errors[0]!r}", file=sys.stderr)
    return [(statistics.median(taken), n) for taken, n in zip(rates, failed, strict=True)]


class Sides:
    """One dispatch-and-await per side, on the engine's client and event loop."""

    def __init__(self, engine: TemporalEngine, client: Client) -> None:
        self.engine = engine
        self.client = client
        self.dispatcher = Dispatcher(engine)

    async def plain(self, n: int, task_queue: str = PLAIN_QUEUE) -> None:
        handle = await self.client.start_workflow(
            PlainOneStep.run,
            n,
            id=f"plain-{uuid.uuid4().hex}",
            task_queue=task_queue,
            request_eager_start=True,
        )
        assert await handle.result() == n

    async def jobkit(self, n: int, queue: str = QUEUE) -> None:
        d = await self.dispatcher.adispatch(one_step, {"n": n}, queue=queue)
        assert await self.client.get_workflow_handle(d.job_id).result() == n

    async def jobkit_polling(self, n: int) -> None:
        d = await self.dispatcher.adispatch(one_step, {"n": n})
        while not (info := await self.dispatcher.aget(d.job_id)).is_terminal:  # noqa: ASYNC110
            await asyncio.sleep(0.002)  # what an app without a result callback does
        assert info.result == n


@contextlib.asynccontextmanager
async def jobkit_worker(
    engine: TemporalEngine, queue: str, concurrency: int
) -> AsyncIterator[None]:
    """`serve` as a task on this loop (`engine.start_worker` is for threads outside it)."""
    stop = asyncio.Event()
    task = asyncio.create_task(
        serve(
            await engine.client(),
            [queue],
            stop=stop,
            task_queue_prefix=engine.task_queue_prefix,
            concurrency=concurrency,
        )
    )
    try:
        yield
    finally:
        stop.set()
        await task


async def bench(
    engine: TemporalEngine, runs: int, jobs: int, rounds: int
) -> list[tuple[str, Any, Any]]:
    client = await engine.client()
    sides = Sides(engine, client)
    runner = SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules("temporal_tasks")
    )

    def plain_worker(task_queue: str, concurrency: int) -> Worker:
        return Worker(
            client,
            task_queue=task_queue,
            workflows=[PlainOneStep],
            activities=[plain_echo],
            workflow_runner=runner,
            max_concurrent_activities=concurrency,
        )

    rows: list[tuple[str, Any, Any]] = []
    async with jobkit_worker(engine, QUEUE, 100), plain_worker(PLAIN_QUEUE, 100):
        plain_lat, jobkit_lat = await latencies(runs, sides.plain, sides.jobkit)
        (polled,) = await latencies(runs, sides.jobkit_polling)
        rows += [
            ("dispatch→result p50 (ms)", plain_lat[0], jobkit_lat[0]),
            ("dispatch→result p99 (ms)", plain_lat[1], jobkit_lat[1]),
            ("dispatch→`get_job` says done, p50 (ms)", None, polled[0]),
            ("dispatch→`get_job` says done, p99 (ms)", None, polled[1]),
        ]
        narrow = await throughput(jobs, rounds, sides.plain, sides.jobkit)
    wide = f"{QUEUE}-wide"
    default_queues.register(QueueSpec(wide, concurrency=jobs))
    async with jobkit_worker(engine, wide, jobs), plain_worker(f"{PLAIN_QUEUE}-wide", jobs):
        broad = await throughput(
            jobs,
            rounds,
            lambda n: sides.plain(n, f"{PLAIN_QUEUE}-wide"),
            lambda n: sides.jobkit(n, wide),
        )
    for concurrency, ((plain, plain_failed), (jobkit, jobkit_failed)) in (
        (100, narrow),
        (jobs, broad),
    ):
        rows.append((f"{jobs} jobs at once, concurrency {concurrency} (jobs/s)", plain, jobkit))
        rows.append((f"… of its {rounds * jobs} jobs, failed", plain_failed, jobkit_failed))
    return rows


def table(rows: list[tuple[str, Any, Any]], runs: int, jobs: int, rounds: int) -> str:
    import temporalio.service

    targets = {"dispatch→result p50 (ms)": "≤ 1.1"}
    lines = [
        f"jobkit-on-Temporal vs plain temporalio {temporalio.service.__version__}: one step "
        f"per job, {runs} sequential runs after {WARM_UP} warm-ups, {jobs} concurrent jobs "
        f"(median of {rounds} bursts); "
        "one local dev server (in memory), worker and client in one process",
        "",
        "| measure | plain temporalio | jobkit | ratio | target |",
        "|---|---|---|---|---|",
    ]
    for measure, plain, jobkit in rows:
        ratio = "" if not plain or isinstance(plain, int) else f"{jobkit / plain:.2f}x"
        lines.append(
            f"| {measure} | {_shown(plain)} | {_shown(jobkit)} | {ratio} "
            f"| {targets.get(measure, '')} |"
        )
    return "\n".join(lines) + "\n"


def _shown(value: float | int | None) -> str:
    if value is None:
        return "—"
    return f"{value:,}" if isinstance(value, int) else f"{value:,.1f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency-runs", type=int, default=300)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    default_queues.register(QueueSpec(QUEUE, concurrency=100))
    with TemporalDevServer() as server:
        engine = TemporalEngine(server.address, task_queue_prefix="bench-")
        try:
            rows = engine._loop.run(  # the bench runs on the engine's own loop and client
                bench(engine, args.latency_runs, args.jobs, args.rounds), timeout=3600
            )
        finally:
            engine.close()
    text = table(rows, args.latency_runs, args.jobs, args.rounds)
    print(text)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "temporal.md").write_text(text)
    time.sleep(0.5)  # let temporalio's runtime wind down before the interpreter exits


if __name__ == "__main__":
    main()
