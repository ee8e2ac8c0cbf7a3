"""Jobs for the strict-mode tests: each breaks one of Temporal's rules outside a step (and
works on inline and RQ), or keeps them all while doing the same things inside steps."""

# ruff: noqa: ASYNC210, ASYNC230, ASYNC251 - blocking calls in handlers are the point here

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import random
import threading
import time
import urllib.request
import uuid
from collections import Counter
from datetime import timedelta

import httpx
from pydantic import BaseModel

from jobkit_engine import JobContext, job

RETRIES = 3  # every job may retry: a strict-mode failure must not

# What steps did, for tests to count; keyed by job id.
step_runs: Counter[str] = Counter()


class Target(BaseModel):
    url: str = ""
    seconds: float = 0.0


def record(job_id: str, value: int = 0) -> int:
    step_runs[job_id] += 1
    return value + 1


async def arecord(job_id: str) -> int:
    step_runs[job_id] += 1
    return 1


# -- calls Temporal's sandbox or workflow event loop refuses --------------------------------


@job("strict.open", retry=RETRIES)
async def opens_a_file(ctx: JobContext) -> str:
    with open(__file__) as source:
        return source.readline()


@job("strict.now", retry=RETRIES)
async def reads_the_clock(ctx: JobContext) -> int:
    return await ctx.step.run(f"report-{datetime.datetime.now():%H%M%S%f}", record, ctx.job_id)


@job("strict.time", retry=RETRIES)
async def reads_time(ctx: JobContext) -> float:
    return time.time()


@job("strict.random", retry=RETRIES)
async def rolls_dice(ctx: JobContext) -> int:
    if random.random() < 2:
        await ctx.step.run("lucky", record, ctx.job_id)
    return 1


@job("strict.uuid", retry=RETRIES)
async def makes_a_uuid(ctx: JobContext) -> int:
    return await ctx.step.run(f"order-{uuid.uuid4()}", record, ctx.job_id)


@job("strict.environ", retry=RETRIES)
async def reads_the_environment(ctx: JobContext) -> bool:
    return os.environ.get("STRICT_MODE_TEST_FLAG") is None


@job("strict.getenv", retry=RETRIES)
async def calls_getenv(ctx: JobContext) -> bool:
    return os.getenv("STRICT_MODE_TEST_FLAG") is None


@job("strict.httpx", retry=RETRIES)
async def requests_with_httpx(ctx: JobContext, target: Target) -> int:
    return httpx.get(target.url).status_code


@job("strict.urllib", retry=RETRIES)
async def requests_with_urllib(ctx: JobContext, target: Target) -> int:
    with urllib.request.urlopen(target.url) as response:
        return int(response.status)


@job("strict.to-thread", retry=RETRIES)
async def uses_to_thread(ctx: JobContext) -> int:
    return await asyncio.to_thread(record, ctx.job_id)


@job("strict.executor", retry=RETRIES)
async def uses_an_executor(ctx: JobContext) -> int:
    return await asyncio.get_running_loop().run_in_executor(None, record, ctx.job_id)


@job("strict.thread", retry=RETRIES)
async def starts_a_thread(ctx: JobContext) -> None:
    thread = threading.Thread(target=record, args=(ctx.job_id,))
    thread.start()
    thread.join()


@job("strict.swallowed", retry=RETRIES)
async def swallows_the_error(ctx: JobContext) -> int:
    with contextlib.suppress(Exception):
        open(__file__).close()
    return await ctx.step.run("after", record, ctx.job_id)


# -- determinism ----------------------------------------------------------------------------

_calls = Counter[str]()


@job("strict.counter", retry=RETRIES)
async def counts_in_a_global(ctx: JobContext) -> None:
    _calls[ctx.job_id] += 1  # differs between an execution and its replay
    await ctx.step.run(f"batch-{_calls[ctx.job_id]}", record, ctx.job_id)


@job("strict.branch", retry=RETRIES)
async def branches_on_a_global(ctx: JobContext) -> None:
    _calls[ctx.job_id] += 1
    await ctx.step.run("first", record, ctx.job_id)
    if _calls[ctx.job_id] == 1:
        await ctx.step.run("only-once", record, ctx.job_id)


# -- blocking -------------------------------------------------------------------------------


def spin(iterations: int) -> int:
    total = 0
    for n in range(iterations):
        total += n
    return total


@job("strict.cpu", retry=RETRIES)
async def burns_cpu(ctx: JobContext, target: Target) -> int:
    await ctx.step.run("before", record, ctx.job_id)
    spin(int(target.seconds))  # `seconds` holds the iterations here
    return await ctx.step.run("after", record, ctx.job_id)


async def aspin(iterations: int) -> int:
    return spin(iterations)  # holds the loop, but inside a step: an activity on Temporal


@job("strict.cpu-in-step", retry=RETRIES)
async def burns_cpu_in_a_step(ctx: JobContext, target: Target) -> int:
    return await ctx.step.run("crunch", aspin, int(target.seconds))


@job("strict.sleep", retry=RETRIES)
async def sleeps_blocking(ctx: JobContext, target: Target) -> None:
    time.sleep(target.seconds)


def churn(iterations: int) -> int:
    """Plain Python that makes calls (a profile hook sees each one), unlike `spin`."""
    total = 0
    for n in range(iterations):
        total += _digit(n) + len(str(n))
    return total


def _digit(n: int) -> int:
    return n % 10


@job("strict.churn", retry=RETRIES)
async def churns(ctx: JobContext, target: Target) -> int:
    await ctx.step.run("before", record, ctx.job_id)
    churn(int(target.seconds))  # `seconds` holds the iterations here
    return await ctx.step.run("after", record, ctx.job_id)


class Chunks(BaseModel):
    iterations: int  # of `spin`, per chunk
    chunks: int
    between: str  # "sleep0" | "step" | "timer"


@job("strict.chunks", retry=RETRIES)
async def works_in_chunks(ctx: JobContext, plan: Chunks) -> int:
    """CPU work in chunks, with an await between them that leaves the loop or does not."""
    for n in range(plan.chunks):
        spin(plan.iterations)
        if plan.between == "step":
            await ctx.step.run(f"chunk-{n}", record, ctx.job_id)
        elif plan.between == "timer":
            await asyncio.sleep(0.001)
        else:
            await asyncio.sleep(0)  # stays in the same workflow task on Temporal
    return plan.chunks


# -- concurrent branches: plain async helpers the handler runs as tasks ---------------------


async def opens_in_a_branch(n: int) -> str:
    await asyncio.sleep(0)
    with open(__file__) as source:
        return source.readline()


async def reads_the_environment_in_a_branch(n: int) -> bool:
    return os.environ.get("STRICT_MODE_TEST_FLAG") is None


async def spins_in_a_branch(iterations: int) -> int:
    await asyncio.sleep(0)
    return spin(iterations)


async def steps_in_a_branch(ctx: JobContext, n: int) -> int:
    value = await ctx.step.run(f"branch-{n}", record, ctx.job_id, n)
    return value * 2  # computing on a step's result is fine


@job("strict.gather-open", retry=RETRIES)
async def gathers_file_reads(ctx: JobContext) -> list[str]:
    return await asyncio.gather(opens_in_a_branch(1), opens_in_a_branch(2))


@job("strict.gather-environ", retry=RETRIES)
async def gathers_environment_reads(ctx: JobContext) -> list[bool]:
    return await asyncio.gather(
        reads_the_environment_in_a_branch(1), reads_the_environment_in_a_branch(2)
    )


@job("strict.task-open", retry=RETRIES)
async def opens_in_a_task(ctx: JobContext) -> str:
    return await asyncio.create_task(opens_in_a_branch(1))


@job("strict.taskgroup-environ", retry=RETRIES)
async def reads_the_environment_in_a_task_group(ctx: JobContext) -> bool:
    async with asyncio.TaskGroup() as group:
        read = group.create_task(reads_the_environment_in_a_branch(1))
    return read.result()


@job("strict.gather-cpu", retry=RETRIES)
async def gathers_cpu_work(ctx: JobContext, target: Target) -> list[int]:
    return await asyncio.gather(spins_in_a_branch(int(target.seconds)), spins_in_a_branch(1))


@job("strict.gather-steps", retry=RETRIES)
async def gathers_branches_with_steps(ctx: JobContext) -> list[int]:
    return await asyncio.gather(*(steps_in_a_branch(ctx, n) for n in range(3)))


# -- well-behaved: the same things, inside steps --------------------------------------------


def read_first_line(path: str) -> str:
    with open(path) as source:
        return source.readline()


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


def fetch(url: str) -> int:
    return httpx.get(url).status_code


async def afetch(url: str) -> int:
    async with httpx.AsyncClient() as client:
        return (await client.get(url)).status_code


async def slow(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


def busy(iterations: int) -> int:
    time.sleep(0.01)
    return spin(iterations)


@job("strict.good", retry=RETRIES)
async def does_it_in_steps(ctx: JobContext, target: Target) -> dict[str, object]:
    line = await ctx.step.run("read", read_first_line, __file__)
    stamp = await ctx.step.run("now", now_iso)
    token = await ctx.step.run("token", new_token)
    env = await ctx.step.run("env", home)
    status = await ctx.step.run("fetch", fetch, target.url)
    astatus = await ctx.step.run("afetch", afetch, target.url)
    ctx.report_progress(0.5, "halfway")
    ctx.logger.info("fetched %s", status)
    waited = await ctx.step.run("slow", slow, target.seconds)  # a long async step is fine
    crunched = await ctx.step.run("crunch", busy, 100_000)
    await ctx.step.sleep("nap", timedelta(milliseconds=1))
    await ctx.step.sleep("rest", timedelta(days=2))  # suspends; the job resumes later
    when = datetime.datetime.fromisoformat(stamp)  # pure functions of step results are fine
    return {
        "line": line.strip(),
        "stamp": when.isoformat(),
        "token": token,
        "env": env is not None,
        "status": [status, astatus],
        "waited": waited,
        "crunched": crunched,
    }


def home() -> str | None:
    return os.getenv("HOME")


def new_token() -> str:
    return str(uuid.uuid4())


def flaky(job_id: str) -> int:
    step_runs[job_id] += 1
    if step_runs[job_id] == 1:
        raise ConnectionError("first call fails")
    return 7


@job("strict.recovers", retry=RETRIES)
async def recovers(ctx: JobContext) -> int:
    """Catches a step's failure and takes another path; retried after a handler failure."""
    try:
        value = await ctx.step.run("try", flaky, ctx.job_id)
    except ConnectionError:
        value = await ctx.step.run("fallback", record, ctx.job_id, 1)
    if ctx.attempt == 1:
        raise RuntimeError("fail the first attempt after the steps")
    return value


@job("strict.parallel", retry=RETRIES)
async def runs_steps_in_parallel(ctx: JobContext) -> list[float]:
    firsts = await asyncio.gather(
        *(ctx.step.run(f"slow-{n}", slow, 0.02 * (3 - n)) for n in range(3))
    )
    seconds = await asyncio.gather(*(ctx.step.run(f"again-{n}", slow, 0.01 * n) for n in range(3)))
    return [*firsts, *seconds]


async def _reads_a_file_then_signals(done: asyncio.Event) -> None:
    with open(__file__) as source:  # refused: the task is the job's own code
        source.readline()
    done.set()


@job("strict.waits-for-a-broken-task", retry=RETRIES)
async def waits_for_a_broken_task(ctx: JobContext) -> str:
    """Waits for a task that breaks a rule before it can signal: the violation must end
    the handler too, not leave it waiting until the attempt times out."""
    done = asyncio.Event()
    task = asyncio.create_task(_reads_a_file_then_signals(done))
    await done.wait()
    await task
    return "signalled"
