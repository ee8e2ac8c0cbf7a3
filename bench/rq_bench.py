"""jobkit-on-RQ against plain RQ, on one fresh redis-server, in one run.

    python bench/rq_bench.py [--jobs 2000] [--latency-runs 300]

Measures, for each side: dispatch jobs/s one by one, drain jobs/s of no-op jobs by one
worker process (RQ's SimpleWorker vs jobkit's worker, both in this process, burst mode),
and dispatch→result latency p50/p99 with a worker subprocess waiting. Prints a table and
writes it to bench/results/rq.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import redis
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import rq_tasks  # noqa: E402

from jobkit import JobkitSettings  # noqa: E402
from jobkit_dispatch import Dispatcher  # noqa: E402
from jobkit_dispatch.engines.rq import RQEngine  # noqa: E402
from jobkit_dispatch.engines.rq.worker import RQWorker  # noqa: E402
from jobkit_dispatch.testing import RedisServer  # noqa: E402

QUEUE = rq_tasks.QUEUE
logging.getLogger("rq").setLevel(logging.WARNING)


def rate(n: int, action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return n / (time.perf_counter() - started)


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return (statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.99) - 1] * 1000)


def bench_dispatch(client: redis.Redis, dispatcher: Dispatcher, n: int) -> tuple[float, float]:
    queue = Queue(QUEUE, connection=client, serializer=JSONSerializer)
    client.flushdb()
    plain = rate(n, lambda: [queue.enqueue(rq_tasks.noop) for _ in range(n)])
    client.flushdb()
    jobkit = rate(n, lambda: [dispatcher.dispatch(rq_tasks.jobkit_noop, {}) for _ in range(n)])
    return plain, jobkit


def bench_drain(
    client: redis.Redis, dispatcher: Dispatcher, settings: JobkitSettings, n: int
) -> tuple[float, float, float]:
    client.flushdb()
    queue = Queue(QUEUE, connection=client, serializer=JSONSerializer)
    for _ in range(n):
        queue.enqueue(rq_tasks.noop)
    worker = SimpleWorker([queue], connection=client, serializer=JSONSerializer)
    plain = rate(n, lambda: worker.work(burst=True, logging_level="WARNING"))
    assert queue.count == 0
    client.flushdb()
    for _ in range(n):
        dispatcher.dispatch(rq_tasks.jobkit_noop, {})
    jk = RQWorker(QUEUE, settings=settings, burst=True)
    jobkit = rate(n, lambda: asyncio.run(jk.run()))
    assert client.llen(f"rq:queue:{QUEUE}") == 0
    client.flushdb()
    for _ in range(n):
        dispatcher.dispatch(rq_tasks.jobkit_noop, {})
    one = RQWorker(QUEUE, settings=settings, burst=True, concurrency=1)
    serial = rate(n, lambda: asyncio.run(one.run()))
    return plain, jobkit, serial


def bench_latency(
    server: RedisServer, client: redis.Redis, dispatcher: Dispatcher, runs: int
) -> tuple[tuple[float, float], tuple[float, float]]:
    env = {**os.environ, "JOBKIT_REDIS_URL": server.url, "PYTHONPATH": str(HERE)}
    client.flushdb()
    queue = Queue(QUEUE, connection=client, serializer=JSONSerializer)
    rq_worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rq.cli",
            "worker",
            "-w",
            "rq.worker.SimpleWorker",
            "--url",
            server.url,
            "--serializer",
            "rq.serializers.JSONSerializer",
            "-q",
            QUEUE,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    plain: list[float] = []
    try:
        queue.enqueue(rq_tasks.noop).latest_result(timeout=30)  # warm up
        for _ in range(runs):
            started = time.perf_counter()
            result = queue.enqueue(rq_tasks.noop).latest_result(timeout=10)
            assert result is not None
            plain.append(time.perf_counter() - started)
    finally:
        rq_worker.terminate()
        rq_worker.wait()
    client.flushdb()
    jk_worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jobkit_dispatch.cli",
            "worker",
            "--engine",
            "rq",
            "-q",
            QUEUE,
            "-i",
            "rq_tasks",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    jobkit: list[float] = []
    try:
        _wait_done(dispatcher, dispatcher.dispatch(rq_tasks.jobkit_noop, {}).job_id, 30)
        for _ in range(runs):
            started = time.perf_counter()
            _wait_done(dispatcher, dispatcher.dispatch(rq_tasks.jobkit_noop, {}).job_id, 10)
            jobkit.append(time.perf_counter() - started)
    finally:
        jk_worker.terminate()
        jk_worker.wait()
    return percentiles(plain), percentiles(jobkit)


def _wait_done(dispatcher: Dispatcher, job_id: str, timeout: float) -> None:
    engine = dispatcher.engine("rq")
    deadline = time.monotonic() + timeout
    while True:
        info = engine.get(job_id)
        if info is not None and info.is_terminal:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(job_id)
        time.sleep(0.0005)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--latency-runs", type=int, default=300)
    args = parser.parse_args()
    with RedisServer() as server:
        settings = JobkitSettings(redis_url=server.url)
        client = redis.Redis.from_url(server.url)
        dispatcher = Dispatcher(RQEngine(settings=settings), settings=settings)
        d_plain, d_jobkit = bench_dispatch(client, dispatcher, args.jobs)
        w_plain, w_jobkit, w_serial = bench_drain(client, dispatcher, settings, args.jobs)
        (l_plain, p99_plain), (l_jobkit, p99_jobkit) = bench_latency(
            server, client, dispatcher, args.latency_runs
        )
    rows = [
        ("dispatch, one by one (jobs/s)", d_plain, d_jobkit, d_jobkit / d_plain, "≥ 0.9"),
        ("drain, one worker process (jobs/s)", w_plain, w_jobkit, w_jobkit / w_plain, "≥ 1.0"),
        ("drain, one process, concurrency 1 (jobs/s)", w_plain, w_serial, w_serial / w_plain, ""),
        ("dispatch→result p50 (ms)", l_plain, l_jobkit, l_jobkit / l_plain, "≤ 1.25"),
        ("dispatch→result p99 (ms)", p99_plain, p99_jobkit, p99_jobkit / p99_plain, ""),
    ]
    table = [
        f"jobkit-on-RQ vs plain RQ (rq {__import__('rq').__version__}), {args.jobs} no-op jobs, "
        f"{args.latency_runs} latency runs, one local redis-server",
        "",
        "| measure | plain RQ | jobkit | ratio | target |",
        "|---|---|---|---|---|",
        *(f"| {m} | {p:,.1f} | {j:,.1f} | {r:.2f}x | {t} |" for m, p, j, r, t in rows),
    ]
    text = "\n".join(table) + "\n"
    print(text)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "rq.md").write_text(text)


if __name__ == "__main__":
    main()
