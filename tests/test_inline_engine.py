"""What the inline engine adds to the contract: concurrency, clocks, shutdown."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta

import pytest

from jobkit.settings import get_settings
from jobkit_dispatch import dispatch_job, get_job
from jobkit_dispatch.conformance import jobs
from jobkit_dispatch.conformance._files import count, open_gate
from jobkit_dispatch.testing import inline_engine, wait_for_job
from jobkit_engine import JobStatus, ManualClock


def _running(info: object) -> bool:
    return getattr(info, "status", None) == JobStatus.RUNNING


def test_queue_concurrency_limits_parallel_jobs(tmp_path: object) -> None:
    workdir = str(tmp_path)
    with inline_engine(concurrency={jobs.QUEUE: 2}):
        ids = [
            dispatch_job(jobs.gated, {"workdir": workdir, "gate": f"g{i}"}).job_id for i in range(3)
        ]
        for job_id in ids[:2]:
            wait_for_job(job_id, _running)
        assert get_job(ids[2]).status == JobStatus.QUEUED
        open_gate(workdir, "g0")
        wait_for_job(ids[2], _running)
        for i in (1, 2):
            open_gate(workdir, f"g{i}")
        assert all(wait_for_job(j).status == JobStatus.SUCCEEDED for j in ids)


def test_manual_clock_wakes_sleepers_in_order_from_another_thread() -> None:
    clock = ManualClock()
    woke: list[int] = []

    async def sleeper(n: int) -> None:
        await clock.sleep_until(clock.now() + timedelta(seconds=n))
        woke.append(n)

    async def main() -> None:
        tasks = [asyncio.create_task(sleeper(n)) for n in (3, 1, 2)]
        await asyncio.sleep(0)  # let the three sleepers register
        assert clock.next_deadline() == clock.now() + timedelta(seconds=1)
        mover = threading.Thread(target=clock.advance, args=(timedelta(seconds=2),))
        mover.start()
        mover.join()
        await asyncio.wait_for(asyncio.gather(tasks[1], tasks[2]), 5)
        assert woke == [1, 2]
        assert not tasks[0].done()
        clock.advance(timedelta(seconds=1))
        await asyncio.wait_for(tasks[0], 5)

    asyncio.run(main())
    assert woke == [1, 2, 3]


def test_without_time_skipping_a_sleeping_job_waits_for_the_clock(tmp_path: object) -> None:
    workdir = str(tmp_path)
    clock = ManualClock()
    with inline_engine(clock) as engine:
        d = dispatch_job(jobs.sleeper, {"workdir": workdir, "seconds": 3600})
        info = wait_for_job(d.job_id, lambda i: i.status == JobStatus.SLEEPING, skip_time=False)
        assert engine.is_idle()
        clock.advance(timedelta(minutes=59))
        assert get_job(d.job_id).status == JobStatus.SLEEPING
        clock.advance(timedelta(minutes=1))
        info = wait_for_job(d.job_id, skip_time=False)
        assert info.status == JobStatus.SUCCEEDED
        assert count(workdir, "before") == 1


def test_close_stops_running_jobs(tmp_path: object) -> None:
    workdir = str(tmp_path)
    with inline_engine() as engine:
        d = dispatch_job(jobs.gated, {"workdir": workdir, "gate": "never"})
        wait_for_job(d.job_id, _running)
    assert engine.get(d.job_id).status == JobStatus.CANCELLED  # type: ignore[union-attr]
    assert count(workdir, "finished-never") == 0


def test_the_size_limit_is_the_setting_every_engine_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    payload = {"text": "ab", "times": 2500}  # a result of about 5,000 bytes
    with inline_engine():
        assert wait_for_job(dispatch_job(jobs.echo, payload).job_id).status == "succeeded"
    monkeypatch.setenv("JOBKIT_MAX_PAYLOAD_BYTES", "1000")
    get_settings.cache_clear()
    try:
        with inline_engine():
            info = wait_for_job(dispatch_job(jobs.echo, payload).job_id)
    finally:
        get_settings.cache_clear()
    assert info.status == JobStatus.FAILED
    assert info.error is not None and info.error.type == "PayloadTooLargeError"
