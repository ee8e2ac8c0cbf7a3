"""What listing, and keeping ended jobs, cost on RQ: Redis commands per page, Redis memory
per finished job, and what a purge frees. One fresh redis-server, about a minute and a half.

    python bench/list_bench.py [--small 1000] [--big 100000] [--limit 50]

Fills two queues with ended no-op jobs run by jobkit's worker (`--small` jobs, a tenth of
them failed; `--big` jobs, all succeeded), a hundredth of each under a second job name.
Then, for pages of `--limit` jobs, counts the Redis commands each costs (INFO
commandstats, commands run inside scripts included) and times it; measures `used_memory`
before and after the big queue's jobs ran (per job, and per million), and after purging
them. Prints a table and writes it to bench/results/list.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from pathlib import Path

import redis
from pydantic import BaseModel

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from jobkit import JobkitSettings, QueueSpec, default_queues  # noqa: E402
from jobkit_dispatch import Dispatcher  # noqa: E402
from jobkit_dispatch.engines.recovery import JobQuery, ListPosition  # noqa: E402
from jobkit_dispatch.engines.rq import RQEngine, keys  # noqa: E402
from jobkit_dispatch.engines.rq.worker import RQWorker  # noqa: E402
from jobkit_dispatch.testing import RedisServer  # noqa: E402
from jobkit_engine import JobContext, JobStatus, job  # noqa: E402

SMALL, BIG = "bench-list-small", "bench-list-big"
for _name in (SMALL, BIG):
    default_queues.register(QueueSpec(_name, concurrency=50))
logging.getLogger("jobkit").setLevel(logging.CRITICAL)  # a failed job logs a line each


class Flags(BaseModel):
    fail: bool = False


@job("bench.listed", queue=SMALL, retry=1)
async def listed(ctx: JobContext, payload: Flags) -> None:
    if payload.fail:
        raise RuntimeError("failed on purpose")


@job("bench.rare", queue=SMALL, retry=1)
async def rare(ctx: JobContext, payload: Flags) -> None:
    if payload.fail:
        raise RuntimeError("failed on purpose")


def fill(dispatcher: Dispatcher, settings: JobkitSettings, queue: str, n: int, fails: int) -> None:
    """`n` jobs on `queue` (every `fails`-th failing, 0: none), run to the end."""
    for i in range(n):
        definition = rare if i % 100 == 0 else listed
        dispatcher.dispatch(definition, {"fail": bool(fails) and i % fails == 0}, queue=queue)
    asyncio.run(RQWorker(queue, settings=settings, burst=True).run())


def page_cost(client: redis.Redis, engine: RQEngine, query: JobQuery) -> tuple[int, int, float]:
    """(jobs on the page, Redis commands, median ms over 20 runs)."""
    engine.list_jobs(query)  # the script is loaded
    client.config_resetstat()
    page = engine.list_jobs(query)
    stats = client.info("commandstats")
    commands = sum(
        v["calls"]
        for k, v in stats.items()
        if k not in ("cmdstat_config|resetstat", "cmdstat_info")
    )
    times = []
    for _ in range(20):
        started = time.perf_counter()
        engine.list_jobs(query)
        times.append(time.perf_counter() - started)
    return len(page.jobs), commands, statistics.median(times) * 1000


def middle(client: redis.Redis, engine: RQEngine, queue: str) -> ListPosition:
    """The position of a job halfway down the queue's succeeded jobs."""
    registry = keys.QueueKeys(queue).finished
    [job_id] = client.zrange(registry, client.zcard(registry) // 2, client.zcard(registry) // 2)
    info = engine.get(job_id.decode())
    assert info is not None
    return ListPosition.of(info)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--big", type=int, default=100_000)
    parser.add_argument("--limit", type=int, default=50)
    args = parser.parse_args()
    started = time.monotonic()
    with RedisServer() as server:
        settings = JobkitSettings(redis_url=server.url)
        client = redis.Redis.from_url(server.url)
        engine = RQEngine(settings=settings)
        dispatcher = Dispatcher(engine, settings=settings)
        fill(dispatcher, settings, SMALL, args.small, fails=10)
        before = client.info("memory")["used_memory"]
        fill(dispatcher, settings, BIG, args.big, fails=0)
        after = client.info("memory")["used_memory"]
        sample = engine.list_jobs(JobQuery(queue=BIG, limit=1)).jobs[0].job_id
        hash_bytes = client.memory_usage(keys.job_key(sample))
        n = args.limit
        rows = []
        for label, query in (
            ("first page", lambda q: JobQuery(queue=q, limit=n)),
            (
                "page from the middle",
                lambda q: JobQuery(queue=q, limit=n, after=middle(client, engine, q)),
            ),
            ("failed jobs", lambda q: JobQuery(queue=q, status=JobStatus.FAILED, limit=n)),
            (
                "job name filter (1 in 100)",
                lambda q: JobQuery(queue=q, job_name="bench.rare", limit=n),
            ),
        ):
            small = page_cost(client, engine, query(SMALL))
            big = page_cost(client, engine, query(BIG))
            rows.append((label, small, big))
        every = page_cost(client, engine, JobQuery(limit=n))
        purge_started = time.perf_counter()
        purged = engine.purge(BIG, JobStatus.SUCCEEDED)
        purge_seconds = time.perf_counter() - purge_started
        purged_memory = client.info("memory")["used_memory"]
    per_job = (after - before) / args.big
    table = [
        f"RQ listing and retention: {args.small:,} and {args.big:,} ended no-op jobs, pages of "
        f"{n}, one local redis-server ({time.monotonic() - started:.0f} s in all)",
        "",
        f"| page | {args.small:,} jobs: listed / commands / ms "
        f"| {args.big:,} jobs: listed / commands / ms |",
        "|---|---|---|",
        *(
            f"| {label} | {s[0]} / {s[1]} / {s[2]:.2f} | {b[0]} / {b[1]} / {b[2]:.2f} |"
            for label, s, b in rows
        ),
        f"| every queue ({len(list(default_queues))} queues), first page | | "
        f"{every[0]} / {every[1]} / {every[2]:.2f} |",
        "",
        "| memory | |",
        "|---|---|",
        f"| used_memory, {args.big:,} finished jobs | {(after - before) / 2**20:,.1f} MiB |",
        f"| per finished job | {per_job:,.0f} bytes (its hash: {hash_bytes} bytes) |",
        f"| per million finished jobs | {per_job * 1e6 / 2**30:,.2f} GiB |",
        f"| purge of the {purged:,} | {purge_seconds:.2f} s, frees "
        f"{(after - purged_memory) / 2**20:,.1f} MiB |",
    ]
    text = "\n".join(table) + "\n"
    print(text)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "list.md").write_text(text)


if __name__ == "__main__":
    main()
