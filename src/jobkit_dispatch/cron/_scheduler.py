"""The `jobkit cron` loop: dispatch every due fire time once, however many processes run.

Per schedule, Redis holds a watermark (`jobkit:cron:last`, schedule → epoch seconds): every
fire time at or before it is handled. It only ever moves forward (a Lua compare-and-set), so
a slow process cannot move it back. Each fire time is dispatched by one process: a short
lease (`SET NX PX` on `jobkit:cron:claim:<schedule>:<epoch>`) picks it, and the dispatch
carries an idempotency key derived from (schedule, fire time), so if the lease holder dies
after dispatching, the next holder's dispatch finds the first job instead of adding one.

While Redis cannot be reached the loop pauses: without the lease and the watermark no
process could tell whether another one already sent a fire time to some engine. Fire times
stay due meanwhile and are handled per the schedule's catch-up policy once Redis answers.
"""

from __future__ import annotations

import logging
import signal
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

from jobkit.durations import utcnow
from jobkit.errors import ConfigurationError, JobkitError
from jobkit.logs import configure_logging
from jobkit.settings import get_settings
from jobkit_dispatch._dispatch import Dispatcher, get_dispatcher
from jobkit_dispatch.cron._schedules import (
    Schedule,
    ScheduleError,
    ScheduleRegistry,
    default_schedules,
    fire_key,
)

if TYPE_CHECKING:
    from redis import Redis

log = logging.getLogger("jobkit.cron")

state_key = "jobkit:cron:last"
claim_key_prefix = "jobkit:cron:claim:"

_ADVANCE = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current and tonumber(current) >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""
_FINISH = """
redis.call('SET', KEYS[2], 'done', 'PX', ARGV[3])
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current and tonumber(current) >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class Plan:
    """What one tick does for one schedule: `fire` these fire times (oldest first), after
    moving the watermark to `passed_until` over the fire times the policy passes over."""

    fire: list[datetime]
    skipped: list[datetime]
    expired_before: datetime | None  # older fire times fell out of catch_up_window
    passed_until: datetime | None


def plan(item: Schedule, last: datetime, now: datetime, grace: timedelta) -> Plan:
    """Which fire times after the watermark `last` and up to `now` to dispatch.

    A fire time at most `grace` old is on time and always fires. Older ones were missed
    (no cron process ran, or Redis was down) and follow `item.catch_up`; only those within
    `item.catch_up_window` are considered at all.
    """
    floor = now - item.catch_up_window
    due = list(item.fire_times(max(last, floor), now))
    on_time = [t for t in due if now - t <= grace]
    missed = due[: len(due) - len(on_time)]
    keep = {"all": missed, "latest": missed[-1:], "skip": []}[item.catch_up]
    skipped = missed[: len(missed) - len(keep)]
    expired = floor if last < floor else None
    passed = skipped[-1] if skipped else expired
    return Plan(keep + on_time, skipped, expired, passed)


@dataclass(frozen=True)
class Fired:
    """One fire time handed to the dispatcher by this process."""

    schedule: str
    fire_time: datetime
    job_id: str
    engine: str
    created: bool  # False: the idempotency key found a job dispatched earlier


def _epoch(when: datetime) -> int:
    return int(when.timestamp())


class Scheduler:
    """Dispatches the due fire times of `schedules`; `tick()` once, or `run()` until stopped.

    `clock` returns the current aware datetime (tests pass a fake one); `grace` is how old a
    fire time may be and still count as on time; `lease` is how long a process holds a fire
    time while it dispatches it (if it dies, another process takes over after that).
    """

    def __init__(
        self,
        schedules: ScheduleRegistry = default_schedules,
        *,
        redis: Redis,
        dispatcher: Dispatcher | None = None,
        clock: Callable[[], datetime] = utcnow,
        grace: timedelta = timedelta(seconds=60),
        lease: timedelta = timedelta(seconds=30),
        done_ttl: timedelta = timedelta(minutes=10),
    ) -> None:
        self.schedules = schedules
        self.redis = redis
        self.dispatcher = dispatcher or get_dispatcher()
        self.clock = clock
        self.grace = grace
        self._lease_ms = int(lease.total_seconds() * 1000)
        self._done_ms = int(done_ttl.total_seconds() * 1000)
        self._token = uuid.uuid4().hex  # whose lease a claim key holds
        self._advance = redis.register_script(_ADVANCE)
        self._finish = redis.register_script(_FINISH)
        self._release = redis.register_script(_RELEASE)
        self._paused: str | None = None

    # -- checks ---------------------------------------------------------------------------

    def check(self) -> None:
        """Fail before the first fire when a schedule names an unknown job or queue, or its
        payload does not validate: `ScheduleError` naming the schedule."""
        for item in self.schedules:
            try:
                payload = item.payload_for(self.clock())
                self.dispatcher.prepare(item.job, payload, queue=item.queue)
            except JobkitError as exc:
                raise ScheduleError(item.name, str(exc)) from exc

    # -- one tick -------------------------------------------------------------------------

    def tick(self, now: datetime | None = None) -> list[Fired]:
        """Dispatch every fire time due at `now` (default: the clock). While Redis cannot be
        reached this does nothing and returns []: fire times stay due."""
        from redis.exceptions import RedisError

        now = (now or self.clock()).astimezone(UTC)
        fired: list[Fired] = []
        try:
            for item in self.schedules:
                fired += self._tick_schedule(item, now)
        except RedisError as exc:
            if self._paused is None:
                log.warning("Redis unavailable, cron paused until it answers: %s", exc)
            self._paused = str(exc)
            return fired
        if self._paused is not None:
            log.info("Redis answers again, cron resumed")
            self._paused = None
        return fired

    def _tick_schedule(self, item: Schedule, now: datetime) -> list[Fired]:
        last = self._watermark(item, now)
        todo = plan(item, last, now, self.grace)
        self._report_passed(item, todo, last)
        if todo.passed_until is not None:
            self._advance(keys=[state_key], args=[item.name, _epoch(todo.passed_until)])
        fired: list[Fired] = []
        for when in todo.fire:
            outcome = self._fire(item, when)
            if outcome == "busy":
                break  # another process holds it, or dispatch failed: next tick retries
            if isinstance(outcome, Fired):
                fired.append(outcome)
        return fired

    def _watermark(self, item: Schedule, now: datetime) -> datetime:
        """The schedule's watermark; a schedule seen for the first time starts now."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hsetnx(state_key, item.name, _epoch(now))
        pipe.hget(state_key, item.name)
        _, raw = pipe.execute()
        return datetime.fromtimestamp(int(raw), UTC)

    def _report_passed(self, item: Schedule, todo: Plan, last: datetime) -> None:
        if todo.expired_before is not None and item.next_after(last) <= todo.expired_before:
            log.warning(
                "schedule %s: fire times after %s up to %s are older than catch_up_window "
                "(%s) and were not run",
                item.name,
                last.isoformat(),
                todo.expired_before.isoformat(),
                item.catch_up_window,
            )
        if todo.skipped:
            log.warning(
                "schedule %s: %d missed fire time(s) from %s to %s not run (catch_up=%s)",
                item.name,
                len(todo.skipped),
                todo.skipped[0].isoformat(),
                todo.skipped[-1].isoformat(),
                item.catch_up,
            )

    def _fire(self, item: Schedule, when: datetime) -> Fired | Literal["done", "busy"]:
        """Claim `when`, dispatch it, mark it done and move the watermark to it."""
        claim = f"{claim_key_prefix}{item.name}:{_epoch(when)}"
        if not self.redis.set(claim, self._token, nx=True, px=self._lease_ms):
            return "done" if self.redis.get(claim) == b"done" else "busy"
        try:
            dispatched = self.dispatcher.dispatch(
                item.job,
                item.payload_for(when),
                queue=item.queue,
                idempotency_key=fire_key(item.name, when),
            )
        except Exception as exc:  # DispatchError, or a payload callable that failed
            log.error("schedule %s: fire time %s not dispatched: %s", item.name, when, exc)
            self._release(keys=[claim], args=[self._token])
            return "busy"
        self._finish(keys=[state_key, claim], args=[item.name, _epoch(when), self._done_ms])
        log.info(
            "schedule %s fired %s: job %s on %s%s",
            item.name,
            when.isoformat(),
            dispatched.job_id,
            dispatched.engine,
            "" if dispatched.created else " (already dispatched)",
        )
        return Fired(item.name, when, dispatched.job_id, dispatched.engine, dispatched.created)

    # -- the loop -------------------------------------------------------------------------

    def seconds_to_next(self, now: datetime, poll: float) -> float:
        """How long to wait before the next tick: until the next fire time, at most `poll`
        (so a Redis that comes back, or a fire claimed by a process that died, is noticed)."""
        upcoming = min((item.next_after(now) for item in self.schedules), default=None)
        if upcoming is None:
            return poll
        return min(max((upcoming - now).total_seconds() + 0.002, 0.01), poll)

    def run(self, stop: threading.Event, *, poll: float = 1.0) -> None:
        """Tick until `stop` is set. An unexpected error is logged and the loop goes on."""
        self.check()
        names = ", ".join(item.name for item in self.schedules) or "none"
        log.info("cron started with schedules: %s", names)
        while not stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("cron tick failed")
            stop.wait(self.seconds_to_next(self.clock(), poll))
        log.info("cron stopped")


def run_cron(
    redis: Redis,
    *,
    schedules: ScheduleRegistry = default_schedules,
    grace: timedelta = timedelta(seconds=60),
    poll: float = 1.0,
) -> None:
    """What `jobkit cron` runs: the loop, until SIGTERM or SIGINT (a second one aborts)."""
    if not len(schedules):
        raise ConfigurationError("no schedules are registered; pass --import myapp.schedules")
    configure_logging(get_settings().log_format)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        log.info("received %s, stopping after the current fire", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    Scheduler(schedules, redis=redis, grace=grace).run(stop, poll=poll)
