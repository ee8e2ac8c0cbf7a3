"""Programs that the process-safety tests run in a fresh interpreter.

A fresh interpreter is the point: the first call of a process imports engines, reads
settings and connects, and that is where a blocked loop or a leftover thread shows.

    python -m tests.process_scripts ticker        # an asyncio app with a 10 ms ticker
    python -m tests.process_scripts exit-sync     # dispatches from threads, then exits
    python -m tests.process_scripts exit-async    # asyncio.run() with adispatch_job
    python -m tests.process_scripts close-sync    # closes the dispatcher mid-call

Settings come from the `JOBKIT_*` environment; each prints one JSON line on stdout.
"""

from __future__ import annotations

import atexit
import json
import sys
import threading


def _temporal_threads_at_exit() -> None:
    """Registered before jobkit is imported, so it runs after jobkit's own exit hook:
    by then no thread of the Temporal engine may be left to call into a finalizing
    interpreter."""
    alive = [t.name for t in threading.enumerate() if t.name.startswith("jobkit-temporal")]
    print(json.dumps({"temporal_threads_at_exit": alive}), flush=True)


atexit.register(_temporal_threads_at_exit)

import asyncio  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

from jobkit_dispatch import (  # noqa: E402
    acancel_job,
    adispatch_job,
    aget_job,
    cancel_job,
    dispatch_job,
    get_dispatcher,
    get_job,
)
from tests import rq_jobs  # noqa: E402

if sys.argv[1:] == ["ticker"]:
    # As an app that uses Temporal does at start-up: importing temporalio holds the
    # interpreter lock for ~0.1 s in one piece (a protobuf descriptor), in any thread.
    import jobkit_dispatch.engines.temporal  # noqa: F401

TICK = 0.01
CALLERS = 4


async def ticker_app() -> dict[str, object]:
    """adispatch_job, aget_job and acancel_job from a loop whose ticker must keep
    ticking every 10 ms whatever the engines do."""
    gaps: list[float] = []
    stop = asyncio.Event()

    async def tick() -> None:
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(TICK)
            now = time.monotonic()
            gaps.append(now - last - TICK)
            last = now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(5 * TICK)
    started = time.monotonic()
    first = await adispatch_job(rq_jobs.ok, {"workdir": "/nonexistent"})
    second = await adispatch_job(rq_jobs.ok, {"workdir": "/nonexistent"})
    info = await aget_job(first.job_id)
    cancelled = await acancel_job(first.job_id)
    await acancel_job(second.job_id)
    took = time.monotonic() - started
    stop.set()
    await ticker
    return {
        "engines": [first.engine, second.engine],
        "reason": first.reason,
        "found_on": info.engine,
        "cancelled": cancelled,
        "calls_took": round(took, 3),
        "ticks": len(gaps),
        "max_gap": round(max(gaps), 3),
    }


def _until_busy(calls: list[int]) -> None:
    """Wait until every caller has finished a call, so that calls are in flight."""
    deadline = time.monotonic() + 20
    while min(calls) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)


def _threads_calling(job_id: str) -> list[int]:
    """Daemon threads that look up and cancel a job until the process ends."""
    calls = [0] * CALLERS

    def call(i: int) -> None:
        while True:
            try:
                get_job(job_id)
                cancel_job(job_id)
            except Exception:  # an engine closing under the call may refuse it
                pass
            calls[i] += 1

    for i in range(CALLERS):
        threading.Thread(target=call, args=(i,), daemon=True).start()
    _until_busy(calls)
    return calls


def exit_sync() -> dict[str, object]:
    d = dispatch_job(rq_jobs.ok, {"workdir": "/nonexistent"})
    calls = _threads_calling(d.job_id)
    return {"engine": d.engine, "calls": sum(calls)}


def close_sync() -> dict[str, object]:
    d = dispatch_job(rq_jobs.ok, {"workdir": "/nonexistent"})
    calls = _threads_calling(d.job_id)
    before, started = list(calls), time.monotonic()
    get_dispatcher().close()  # the callers are mid-call
    deadline = started + 5
    while any(now <= then for now, then in zip(calls, before, strict=True)):
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    resumed = time.monotonic() - started  # until every caller is through a call again
    time.sleep(0.5)  # what an engine left behind would report meanwhile
    return {"engine": d.engine, "calls": sum(calls), "resumed_after_close": round(resumed, 3)}


async def exit_async() -> dict[str, object]:
    d = await adispatch_job(rq_jobs.ok, {"workdir": "/nonexistent"})
    calls = [0] * CALLERS

    async def call(i: int) -> None:
        while True:
            await aget_job(d.job_id)
            await acancel_job(d.job_id)
            calls[i] += 1

    tasks = [asyncio.create_task(call(i)) for i in range(CALLERS)]
    deadline = time.monotonic() + 20
    while min(calls) < 1 and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    assert not any(t.done() for t in tasks), [t.exception() for t in tasks if t.done()]
    return {"engine": d.engine, "calls": sum(calls)}  # asyncio.run cancels the callers


PROGRAMS: dict[str, Callable[[], dict[str, object]]] = {
    "ticker": lambda: asyncio.run(ticker_app()),
    "exit-sync": exit_sync,
    "exit-async": lambda: asyncio.run(exit_async()),
    "close-sync": close_sync,
}

if __name__ == "__main__":
    print(json.dumps(PROGRAMS[sys.argv[1]]()), flush=True)
