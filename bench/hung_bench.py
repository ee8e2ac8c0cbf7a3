"""What a hung server costs the callers: each call's time, and cron's lag.

    python bench/hung_bench.py [--calls 5] [--cron-seconds 15]

A hung server is a loopback port that accepts connections and never answers
(`jobkit_dispatch.testing.hung_server.HungServer`). Three cases, default settings
(Temporal connect timeout 2 s, Redis 0.25 s connect + 0.5 s per command, cool-down 5 s):

- Temporal hung, RQ off: dispatch_job, get_job, cancel_job, each call timed;
- Redis and Temporal both hung: dispatch_job without and with an idempotency key;
- cron on a one-second schedule with RQ healthy (a real redis-server and worker) and
  Temporal hung: fire times due, dispatched, and how late their jobs were created.

Prints the figures; nothing is asserted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import rq_tasks  # noqa: E402

from jobkit import JobkitSettings  # noqa: E402
from jobkit.errors import JobkitError  # noqa: E402
from jobkit_dispatch import Dispatcher, idempotent_job_id  # noqa: E402
from jobkit_dispatch.cron import Scheduler, ScheduleRegistry, fire_key, schedule  # noqa: E402
from jobkit_dispatch.testing import RedisServer  # noqa: E402
from jobkit_dispatch.testing.hung_server import HungServer  # noqa: E402
from jobkit_dispatch.testing.rq_worker import WorkerProcess  # noqa: E402


def timed(action: Callable[[], object]) -> str:
    started = time.perf_counter()
    try:
        action()
        outcome = "ok"
    except JobkitError as exc:
        outcome = type(exc).__name__
    return f"{(time.perf_counter() - started) * 1000:7.1f} ms {outcome}"


def temporal_hung(calls: int) -> None:
    with HungServer() as temporal:
        settings = JobkitSettings(use_rq=False, temporal_address=temporal.address)
        dispatcher = Dispatcher(settings=settings)
        print("Temporal hung, RQ off")
        for name, call in [
            ("dispatch", lambda: dispatcher.dispatch(rq_tasks.jobkit_noop, {})),
            ("get", lambda: dispatcher.get("some-job")),
            ("cancel", lambda: dispatcher.cancel("some-job")),
        ]:
            print(f"  {name:9}", " | ".join(timed(call) for _ in range(calls)))
        print(f"  connections accepted by the hung Temporal: {temporal.connections}")
        dispatcher.close()


def both_hung(calls: int) -> None:
    with HungServer() as redis, HungServer() as temporal:
        settings = JobkitSettings(redis_url=redis.url, temporal_address=temporal.address)
        dispatcher = Dispatcher(settings=settings)
        print("Redis and Temporal hung")
        plain = [timed(lambda: dispatcher.dispatch(rq_tasks.jobkit_noop, {})) for _ in range(calls)]
        keyed = [
            timed(lambda n=n: dispatcher.dispatch(rq_tasks.jobkit_noop, {}, idempotency_key=n))
            for n in map(str, range(calls))
        ]
        print("  dispatch           ", " | ".join(plain))
        print("  dispatch with a key", " | ".join(keyed))
        print(f"  connections accepted: Redis {redis.connections}, Temporal {temporal.connections}")
        dispatcher.close()


def cron_with_temporal_hung(seconds: float) -> None:
    logging.getLogger("jobkit.cron").setLevel(logging.CRITICAL)
    registry = ScheduleRegistry()
    schedule("tick", every=1, job=rq_tasks.jobkit_noop, payload={}, registry=registry)
    path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    with RedisServer() as server, HungServer() as temporal:
        worker = WorkerProcess(
            server.url, [rq_tasks.QUEUE], ["rq_tasks"], env={"PYTHONPATH": path}
        ).start()
        settings = JobkitSettings(redis_url=server.url, temporal_address=temporal.address)
        dispatcher = Dispatcher(settings=settings)
        scheduler = Scheduler(registry, redis=dispatcher.engine("rq").redis, dispatcher=dispatcher)  # type: ignore[attr-defined]
        stop = threading.Event()
        started = datetime.now(UTC)
        thread = threading.Thread(target=scheduler.run, args=(stop,), kwargs={"poll": 0.2})
        thread.start()
        time.sleep(seconds)
        stop.set()
        thread.join()
        ended = datetime.now(UTC)
        due = list(registry.get("tick").fire_times(started, ended))
        lags = []
        for when in due:
            job_id = idempotent_job_id(rq_tasks.jobkit_noop.name, fire_key("tick", when))
            info = dispatcher.engine("rq").get(job_id)
            if info is not None and info.created_at is not None:
                lags.append((info.created_at - when).total_seconds())
        worker.stop()
        dispatcher.close()
    print(f"cron, 1 s schedule, RQ healthy, Temporal hung, {seconds:g} s")
    print(f"  fire times due {len(due)}, dispatched {len(lags)}")
    if lags:
        print(f"  lag: first {lags[0]:.2f} s, max {max(lags):.2f} s, last {lags[-1]:.2f} s")
    print(f"  connections accepted by the hung Temporal: {temporal.connections}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--cron-seconds", type=float, default=15.0)
    args = parser.parse_args()
    temporal_hung(args.calls)
    both_hung(args.calls)
    cron_with_temporal_hung(args.cron_seconds)


if __name__ == "__main__":
    main()
