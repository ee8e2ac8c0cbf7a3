"""`jobkit cron`: fire times, validation, catch-up, and one job per fire time across processes.

Fire-time and policy tests are pure. Scheduler tests run on the real Redis with a fake
clock and the inline engine; the end-to-end test runs `jobkit cron` processes and an RQ
worker on a one-second schedule.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from redis.backoff import NoBackoff
from redis.retry import Retry

from jobkit import JobkitSettings
from jobkit.errors import EngineUnavailableError
from jobkit_dispatch import Dispatcher, dispatch_job, idempotent_job_id
from jobkit_dispatch.cli import main
from jobkit_dispatch.conformance._files import count
from jobkit_dispatch.cron import (
    DuplicateScheduleError,
    Schedule,
    ScheduleError,
    Scheduler,
    ScheduleRegistry,
    fire_key,
    plan,
    schedule,
)
from jobkit_dispatch.cron._scheduler import claim_key_prefix, state_key
from jobkit_dispatch.engines.inline import InlineEngine
from jobkit_dispatch.testing import RedisServer, use_engine, wait_for_job
from jobkit_dispatch.testing.rq_worker import WorkerProcess
from jobkit_engine import JobStatus, ManualClock
from tests.cron_jobs import fire_payload, record_fire, tally_name

BERLIN = "Europe/Berlin"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


# -- fire times ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "winter_utc_hour", "summer_utc_hour"),
    [(BERLIN, 5, 4), ("America/New_York", 11, 10)],
)
def test_a_daily_schedule_fires_at_local_time_across_both_dst_changes(
    zone: str, winter_utc_hour: int, summer_utc_hour: int
) -> None:
    daily = Schedule("daily", job="x", cron="0 6 * * *", timezone=zone)
    year = list(daily.fire_times(utc(2024, 1, 1), utc(2025, 1, 1)))
    assert len(year) == 366
    assert {t.astimezone(daily._zone).hour for t in year} == {6}
    utc_hours = [t.hour for t in year]
    assert utc_hours[0] == utc_hours[-1] == winter_utc_hour
    assert summer_utc_hour in utc_hours[150:200]


def test_a_fire_time_in_the_skipped_hour_fires_once_when_the_clock_jumps() -> None:
    nightly = Schedule("n", job="x", cron="30 2 * * *", timezone=BERLIN)
    fires = list(nightly.fire_times(utc(2024, 3, 29, 12), utc(2024, 4, 1, 12)))
    # 02:30 CET, then 03:00 CEST (02:30 does not exist on the 31st), then 02:30 CEST
    assert fires == [utc(2024, 3, 30, 1, 30), utc(2024, 3, 31, 1), utc(2024, 4, 1, 0, 30)]
    every_20 = Schedule("m", job="x", cron="*/20 1-3 * * *", timezone=BERLIN)
    night = list(every_20.fire_times(utc(2024, 3, 30, 23), utc(2024, 3, 31, 3)))
    local = [t.astimezone(every_20._zone).strftime("%H:%M") for t in night]
    assert local == ["01:00", "01:20", "01:40", "03:00", "03:20", "03:40"]


def test_a_fire_time_in_the_repeated_hour_fires_once_at_its_first_occurrence() -> None:
    nightly = Schedule("n", job="x", cron="30 2 * * *", timezone=BERLIN)
    fires = list(nightly.fire_times(utc(2024, 10, 26, 12), utc(2024, 10, 28, 12)))
    assert fires == [utc(2024, 10, 27, 0, 30), utc(2024, 10, 28, 1, 30)]
    # Starting inside the second 02:xx hour does not fire 02:30 again.
    assert nightly.next_after(utc(2024, 10, 27, 1, 10)) == utc(2024, 10, 28, 1, 30)


def test_interval_schedules_count_real_time_from_the_epoch() -> None:
    hourly = Schedule("h", job="x", every=timedelta(hours=1))
    # The day the clocks go back in Berlin has 25 hours.
    assert len(list(hourly.fire_times(utc(2024, 10, 26, 22), utc(2024, 10, 27, 23)))) == 25
    seven = Schedule("s", job="x", every=timedelta(seconds=7))
    assert seven.next_after(utc(2024, 1, 1)) == utc(2024, 1, 1, 0, 0, 4)  # epoch + k * 7 s
    assert seven.next_after(utc(2024, 1, 1, 0, 0, 4)) == utc(2024, 1, 1, 0, 0, 11)


def test_a_six_field_cron_expression_fires_every_second() -> None:
    each = Schedule("e", job="x", cron="* * * * * *")
    assert list(each.fire_times(utc(2024, 1, 1), utc(2024, 1, 1, 0, 0, 3))) == [
        utc(2024, 1, 1, 0, 0, s) for s in (1, 2, 3)
    ]


# -- definitions --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cron": "61 * * * *"}, "invalid cron expression '61 * * * *'"),
        ({"cron": "0 6 * * *", "timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"cron": "0 6 * * *", "catch_up": "some"}, "unknown catch_up policy 'some'"),
        ({}, "exactly one of cron= or every="),
        ({"cron": "0 6 * * *", "every": 60}, "exactly one of cron= or every="),
        ({"every": 0.5}, "whole number of seconds"),
        ({"every": 60, "timezone": BERLIN}, "timezone= applies to cron="),
        ({"every": 60, "catch_up_window": timedelta(0)}, "catch_up_window must be positive"),
    ],
)
def test_bad_schedules_fail_at_definition_naming_the_schedule(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ScheduleError, match=r"^schedule 'nightly-digest': ") as raised:
        schedule("nightly-digest", job="x", registry=ScheduleRegistry(), **options)
    assert message in str(raised.value)


def test_two_schedules_cannot_share_a_name() -> None:
    registry = ScheduleRegistry()
    schedule("digest", job="x", cron="0 6 * * *", registry=registry)
    schedule("digest", job="x", cron="0 6 * * *", registry=registry)  # same one again: fine
    with pytest.raises(DuplicateScheduleError, match="'digest'"):
        schedule("digest", job="x", cron="0 7 * * *", registry=registry)


def test_importing_the_schedule_api_imports_no_engine_library() -> None:
    code = "import sys, jobkit_dispatch.cron; print(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert not {"rq", "redis", "temporalio"} & set(out.stdout.split())


# -- catch-up plans -----------------------------------------------------------------------

GRACE = timedelta(seconds=10)
MINUTE = timedelta(minutes=1)


@pytest.mark.parametrize(
    ("policy", "fired_minutes"),
    [("skip", [11]), ("latest", [10, 11]), ("all", list(range(2, 12)))],
)
def test_missed_fire_times_follow_the_catch_up_policy(
    policy: str, fired_minutes: list[int]
) -> None:
    minutely = Schedule("m", job="x", every=MINUTE, catch_up=policy)  # type: ignore[arg-type]
    # Last handled 12:01; now 12:11:05: 12:11 is on time, 12:02-12:10 were missed.
    todo = plan(minutely, utc(2024, 5, 1, 12, 1), utc(2024, 5, 1, 12, 11, 5), GRACE)
    assert todo.fire == [utc(2024, 5, 1, 12, m) for m in fired_minutes]
    assert todo.skipped == [utc(2024, 5, 1, 12, m) for m in range(2, fired_minutes[0])]


def test_only_fire_times_within_the_catch_up_window_are_caught_up() -> None:
    minutely = Schedule("m", job="x", every=MINUTE, catch_up="all", catch_up_window=5 * MINUTE)
    todo = plan(minutely, utc(2024, 5, 1, 12), utc(2024, 5, 1, 13, 0, 30), GRACE)
    assert todo.fire == [utc(2024, 5, 1, 12, m) for m in range(56, 60)] + [utc(2024, 5, 1, 13)]
    assert todo.expired_before == todo.passed_until == utc(2024, 5, 1, 12, 55, 30)


# -- the scheduler on Redis, with a fake clock and the inline engine -----------------------


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


T0 = utc(2024, 5, 1, 12, 0, 5)


@pytest.fixture
def client(jobkit_redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(jobkit_redis_server.url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def minutely(tmp_path: Path, request: pytest.FixtureRequest) -> ScheduleRegistry:
    registry = ScheduleRegistry()
    policy = getattr(request, "param", "all")
    schedule(
        "minutely",
        every=MINUTE,
        job=record_fire,
        payload=fire_payload("minutely", str(tmp_path)),
        catch_up=policy,
        registry=registry,
    )
    return registry


def scheduler(client: redis.Redis, registry: ScheduleRegistry, clock: FakeClock) -> Scheduler:
    return Scheduler(registry, redis=client, clock=clock, grace=GRACE)


def fire_times(fired: list[Any]) -> list[datetime]:
    return [f.fire_time for f in fired]


@pytest.mark.usefixtures("jobkit_inline")
@pytest.mark.parametrize(
    ("minutely", "fired_minutes"),
    [("skip", [11]), ("latest", [10, 11]), ("all", list(range(2, 12)))],
    indirect=["minutely"],
)
def test_a_restarted_scheduler_catches_up_per_policy_and_runs_each_fire_once(
    client: redis.Redis, minutely: ScheduleRegistry, fired_minutes: list[int], tmp_path: Path
) -> None:
    clock = FakeClock(T0)
    assert scheduler(client, minutely, clock).tick() == []  # a new schedule starts now
    clock.advance(60)
    first = scheduler(client, minutely, clock).tick()
    assert fire_times(first) == [utc(2024, 5, 1, 12, 1)]
    clock.advance(600)  # down for ten minutes, then a new process
    fired = scheduler(client, minutely, clock).tick()
    assert fire_times(fired) == [utc(2024, 5, 1, 12, m) for m in fired_minutes]
    assert scheduler(client, minutely, clock).tick() == []
    for f in first + fired:
        assert f.created
        assert f.job_id == idempotent_job_id("crontest.fire", fire_key("minutely", f.fire_time))
        assert wait_for_job(f.job_id).status == JobStatus.SUCCEEDED
        assert count(str(tmp_path), tally_name("minutely", f.fire_time)) == 1
    assert len(list(tmp_path.glob("*.tally"))) == 1 + len(fired_minutes)


@pytest.mark.usefixtures("jobkit_inline")
def test_concurrent_schedulers_dispatch_each_fire_time_once(
    client: redis.Redis, minutely: ScheduleRegistry
) -> None:
    clock = FakeClock(T0)
    scheduler(client, minutely, clock).tick()
    clock.advance(300)
    results: list[Any] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        s = scheduler(client, minutely, clock)
        barrier.wait()
        results.extend(s.tick())

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    late_ones = [f for f in results if not f.created]
    assert sorted(fire_times(results)) == [utc(2024, 5, 1, 12, m) for m in range(1, 6)]
    assert late_ones == []


@pytest.mark.usefixtures("jobkit_inline")
def test_the_watermark_never_moves_back(client: redis.Redis, minutely: ScheduleRegistry) -> None:
    ahead, behind = FakeClock(T0), FakeClock(T0)
    scheduler(client, minutely, ahead).tick()
    ahead.advance(180)
    assert len(scheduler(client, minutely, ahead).tick()) == 3
    mark = client.hget(state_key, "minutely")
    behind.advance(90)
    assert scheduler(client, minutely, behind).tick() == []
    assert client.hget(state_key, "minutely") == mark


@pytest.mark.usefixtures("jobkit_inline")
def test_a_fire_dispatched_by_a_process_that_died_is_not_dispatched_again(
    client: redis.Redis, minutely: ScheduleRegistry, tmp_path: Path
) -> None:
    clock = FakeClock(T0)
    scheduler(client, minutely, clock).tick()
    clock.advance(60)
    due = utc(2024, 5, 1, 12, 1)
    first = dispatch_job(
        record_fire,
        fire_payload("minutely", str(tmp_path))(due),
        idempotency_key=fire_key("minutely", due),
    )
    (fired,) = scheduler(client, minutely, clock).tick()
    assert (fired.job_id, fired.created) == (first.job_id, False)


@pytest.mark.usefixtures("jobkit_inline")
def test_a_fire_held_by_another_process_waits_for_its_lease(
    client: redis.Redis, minutely: ScheduleRegistry
) -> None:
    clock = FakeClock(T0)
    s = scheduler(client, minutely, clock)
    s.tick()
    clock.advance(60)
    client.set(f"{claim_key_prefix}minutely:{int(utc(2024, 5, 1, 12, 1).timestamp())}", "x", px=300)
    assert s.tick() == []
    deadline = time.monotonic() + 5
    while not (fired := s.tick()):
        assert time.monotonic() < deadline, "the fire was never taken over"
        time.sleep(0.02)
    assert fire_times(fired) == [utc(2024, 5, 1, 12, 1)]


class FailsOnce(InlineEngine):
    failures = 1

    def enqueue(self, request: Any) -> bool:
        if self.failures:
            self.failures -= 1
            raise EngineUnavailableError("down for a moment")
        return super().enqueue(request)


def test_a_fire_that_could_not_be_dispatched_is_retried_not_dropped(
    client: redis.Redis, minutely: ScheduleRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(T0)
    engine = FailsOnce(clock=ManualClock())
    with use_engine(engine):
        s = scheduler(client, minutely, clock)
        s.tick()
        clock.advance(60)
        assert s.tick() == []
        assert "not dispatched: could not dispatch job 'crontest.fire'" in caplog.text
        assert fire_times(s.tick()) == [utc(2024, 5, 1, 12, 1)]
    engine.close()


@pytest.mark.usefixtures("jobkit_inline")
def test_while_redis_is_down_cron_pauses_and_then_catches_up(
    minutely: ScheduleRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "jobkit.cron")
    clock = FakeClock(T0)
    with RedisServer(appendonly=True) as server:
        # As `jobkit cron` connects (jobkit.connection): short timeouts, no silent retries.
        client = redis.Redis.from_url(
            server.url, socket_timeout=0.5, socket_connect_timeout=0.25, retry=Retry(NoBackoff(), 0)
        )
        s = scheduler(client, minutely, clock)
        s.tick()
        server.stop()
        clock.advance(180)
        assert s.tick() == []
        assert "Redis unavailable, cron paused" in caplog.text
        server.start()
        deadline = time.monotonic() + 5
        while not (fired := s.tick()):
            assert time.monotonic() < deadline, "cron did not resume"
            time.sleep(0.02)
        assert fire_times(fired) == [utc(2024, 5, 1, 12, m) for m in (1, 2, 3)]
        assert "cron resumed" in caplog.text
        client.close()


@pytest.mark.usefixtures("jobkit_inline")
def test_check_names_the_schedule_whose_job_or_payload_is_wrong(client: redis.Redis) -> None:
    registry = ScheduleRegistry()
    schedule("orphan", job="no.such.job", every=60, registry=registry)
    with pytest.raises(ScheduleError, match=r"schedule 'orphan': no job named 'no\.such\.job'"):
        Scheduler(registry, redis=client).check()
    registry = ScheduleRegistry()
    schedule("bad", job=record_fire, payload={"workdir": 1}, every=60, registry=registry)
    with pytest.raises(ScheduleError, match="schedule 'bad': invalid payload"):
        Scheduler(registry, redis=client).check()


# -- end to end: `jobkit cron` processes and an RQ worker ---------------------------------

E2E_GRACE = 2.0
POLICIES = ("skip", "latest", "all")


class CronProcess:
    """`jobkit cron --import tests.cron_jobs` in a child process, logging to a file."""

    def __init__(self, url: str, workdir: Path, log: Path) -> None:
        env = {
            **os.environ,
            "JOBKIT_REDIS_URL": url,
            "JOBKIT_ENGINE": "rq",
            "CRON_TEST_WORKDIR": str(workdir),
        }
        args = ["cron", "--import", "tests.cron_jobs", "--grace", str(E2E_GRACE)]
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "jobkit_dispatch.cli", *args],
                env=env,
                stdout=out,
                stderr=out,
            )

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise


def handled(client: redis.Redis) -> dict[str, set[int]]:
    """Fire times (epochs) per schedule that a cron process dispatched and marked done."""
    fires: dict[str, set[int]] = {f"every-second-{p}": set() for p in POLICIES}
    for key in client.scan_iter(f"{claim_key_prefix}*"):
        if client.get(key) == b"done":
            name, epoch = key.decode().removeprefix(claim_key_prefix).rsplit(":", 1)
            fires[name].add(int(epoch))
    return fires


def watermarks(client: redis.Redis) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in client.hgetall(state_key).items()}


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def run_cron_processes(
    url: str, client: redis.Redis, workdir: Path, logs: Path
) -> tuple[dict[str, int], float]:
    """Three processes for a few fires; all down for ~6 s; then one, then two more.
    Returns the watermarks when all were down, and the downtime's end."""
    procs = [CronProcess(url, workdir, logs / f"cron-{i}.log") for i in range(3)]
    try:
        wait_until(
            lambda: min(map(len, handled(client).values())) >= 5, 15, "fires from 3 processes"
        )
    finally:
        assert [p.stop() for p in procs] == [0, 0, 0]  # SIGTERM stops them cleanly
    down = watermarks(client)
    time.sleep(max(0.0, max(down.values()) + 6.2 - time.time()))  # fire times pass unseen
    restarted = time.time()
    procs = [CronProcess(url, workdir, logs / "cron-3.log")]
    try:
        wait_until(lambda: min(watermarks(client).values()) >= restarted + 1, 15, "the catch-up")
        procs += [CronProcess(url, workdir, logs / f"cron-{i}.log") for i in (4, 5)]
        joined = time.time()
        wait_until(lambda: min(watermarks(client).values()) >= joined + 2, 15, "more fires")
    finally:
        assert [p.stop() for p in procs] == [0] * len(procs)
    return down, restarted


def lateness(url: str, name: str, epoch: int) -> float:
    """Seconds between a fire time and the dispatch of its job."""
    dispatcher = Dispatcher(settings=JobkitSettings(redis_url=url, engine="rq"))  # type: ignore[arg-type]
    fire_time = datetime.fromtimestamp(epoch, UTC)
    info = dispatcher.get(idempotent_job_id("crontest.fire", fire_key(name, fire_time)))
    dispatcher.close()
    assert info.created_at is not None
    return (info.created_at - fire_time).total_seconds()


def skipped(logs: Path, name: str) -> list[tuple[int, int]]:
    """(first, last) epochs of each "missed fire time(s) ... not run" warning for `name`."""
    pattern = rf"schedule {name}: \d+ missed fire time\(s\) from (\S+) to (\S+) not run"
    text = "".join(p.read_text() for p in sorted(logs.glob("cron-*.log")))
    return [
        (int(datetime.fromisoformat(a).timestamp()), int(datetime.fromisoformat(b).timestamp()))
        for a, b in re.findall(pattern, text)
    ]


def test_cron_processes_run_each_fire_time_once_and_catch_up_after_downtime(
    jobkit_redis_server: RedisServer, client: redis.Redis, tmp_path: Path
) -> None:
    url, workdir = jobkit_redis_server.url, tmp_path / "work"
    workdir.mkdir()
    worker = WorkerProcess(url, ["cron-test"], ["tests.cron_jobs"], log_path=tmp_path / "w.log")
    with worker.start():
        down, restarted = run_cron_processes(url, client, workdir, tmp_path)
        fires = handled(client)
        expected = {f"{name}-{epoch}" for name, epochs in fires.items() for epoch in epochs}
        wait_until(
            lambda: {p.stem for p in workdir.glob("*.tally")} >= expected, 15, "the jobs to run"
        )
    assert {p.stem for p in workdir.glob("*.tally")} == expected
    assert all(count(str(workdir), name) == 1 for name in expected)  # each fire ran once
    for name, epochs in fires.items():
        before = sorted(e for e in epochs if e <= down[name])
        after = sorted(e for e in epochs if e > down[name])
        assert before == list(range(before[0], before[-1] + 1)), f"{name} lost a fire"
        assert after == list(range(after[0], after[-1] + 1)), f"{name} lost a fire"
        policy = name.removeprefix("every-second-")
        passed_over = skipped(tmp_path, name)
        if policy == "all":  # every missed fire ran, each more than the grace late
            assert passed_over == [] and after[0] == down[name] + 1, (down[name], after)
            assert sum(lateness(url, name, e) > E2E_GRACE for e in after) >= 3
        else:  # the missed fires were passed over, and said so; `latest` ran the last one
            assert passed_over == [(down[name] + 1, after[0] - 1)]
            assert after[0] >= down[name] + 3, (down[name], after)
            if policy == "latest":
                assert lateness(url, name, after[0]) > E2E_GRACE
    assert restarted > max(down.values()) + 6


def test_the_cron_command_refuses_to_run_without_schedules() -> None:
    result = CliRunner().invoke(main, ["cron", "--import", "tests.jobs"])
    assert result.exit_code != 0
    assert "no schedules are registered; pass --import myapp.schedules" in result.output
