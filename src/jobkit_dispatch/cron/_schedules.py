"""Schedules defined in code: what fires when, and what to do about fire times missed.

A schedule is either a cron expression read in a time zone (`cron="0 6 * * *"`,
`timezone="Europe/Berlin"`) or a fixed interval (`every=timedelta(minutes=5)`, counted from
the Unix epoch in UTC, so every process computes the same fire times). Fire times are
always returned as aware UTC datetimes, whole seconds.

Cron fire times follow the wall clock of their time zone, so a daily 06:00 Europe/Berlin
schedule fires at 06:00 local in winter and in summer. Around DST changes:

- a wall-clock time that does not exist (the hour skipped in spring) fires once, at the
  moment the clock jumps (for Europe/Berlin 03:00 CEST); several fire times inside the
  skipped hour become that one fire;
- a wall-clock time that occurs twice (the hour repeated in autumn) fires once, at its first
  occurrence.

Interval schedules do not follow the wall clock: `every=timedelta(hours=1)` fires every real
hour, 25 times on the day the clocks go back.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from jobkit.errors import ConfigurationError
from jobkit_engine import JobDefinition

CatchUp = Literal["skip", "latest", "all"]
CATCH_UP_POLICIES: tuple[str, ...] = get_args(CatchUp)
DEFAULT_CATCH_UP_WINDOW = timedelta(days=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Payload = Any  # JSON data or the job's model, or a callable fire_time -> payload


class ScheduleError(ConfigurationError, ValueError):
    """A schedule that cannot work as written; the message names the schedule."""

    def __init__(self, name: str, problem: str) -> None:
        self.schedule = name
        super().__init__(f"schedule {name!r}: {problem}")


class DuplicateScheduleError(ScheduleError):
    """Two schedules under one name: their fire times would share dedupe keys."""


@dataclass(frozen=True)
class Schedule:
    """One recurring job. Build it with `schedule(...)`, which also validates and registers.

    `catch_up` decides what happens to fire times that passed while no cron process ran
    (or Redis was down): `skip` drops them, `latest` runs the most recent one once, `all`
    runs every one of them; in every case only fire times within `catch_up_window` count.
    """

    name: str
    job: str
    payload: Payload = None
    cron: str | None = None
    every: timedelta | None = None
    timezone: str = "UTC"
    catch_up: CatchUp = "latest"
    catch_up_window: timedelta = DEFAULT_CATCH_UP_WINDOW
    queue: str | None = None
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._validate_timing()
        if self.catch_up not in CATCH_UP_POLICIES:
            raise ScheduleError(
                self.name,
                f"unknown catch_up policy {self.catch_up!r}; use one of "
                + ", ".join(CATCH_UP_POLICIES),
            )
        if self.catch_up_window <= timedelta(0):
            raise ScheduleError(self.name, "catch_up_window must be positive")
        try:
            zone = ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ScheduleError(
                self.name, f"unknown time zone {self.timezone!r} (use an IANA name)"
            ) from exc
        object.__setattr__(self, "_zone", zone)

    def _validate_timing(self) -> None:
        if not self.name:
            raise ScheduleError(self.name, "a schedule needs a name")
        if (self.cron is None) == (self.every is None):
            raise ScheduleError(self.name, "pass exactly one of cron= or every=")
        if self.cron is not None and not croniter.is_valid(self.cron):
            raise ScheduleError(
                self.name,
                f"invalid cron expression {self.cron!r} (five fields: minute hour day "
                "month weekday, optionally a sixth for seconds)",
            )
        if self.every is not None:
            seconds = self.every.total_seconds()
            if seconds < 1 or seconds != int(seconds):
                raise ScheduleError(
                    self.name,
                    f"every= must be a whole number of seconds, at least 1; got {seconds}",
                )
            if self.timezone != "UTC":
                raise ScheduleError(
                    self.name,
                    "timezone= applies to cron= schedules; every= counts real time from the "
                    "Unix epoch (use cron= for wall-clock times)",
                )

    # -- fire times -----------------------------------------------------------------------

    def next_after(self, after: datetime) -> datetime:
        """The first fire time strictly after `after` (aware), in UTC."""
        after = after.astimezone(UTC)
        if self.every is not None:
            step = int(self.every.total_seconds())
            elapsed = int((after - _EPOCH).total_seconds() // step)
            return _EPOCH + timedelta(seconds=(elapsed + 1) * step)
        assert self.cron is not None
        wall = after.astimezone(self._zone).replace(tzinfo=None)
        times = croniter(self.cron, wall)
        while True:
            # Wall-clock times are mapped to instants one by one; in a repeated hour the
            # mapping goes back in time, so skip what is not after `after`.
            when = _wall_to_utc(times.get_next(datetime), self._zone)
            if when > after:
                return when

    def fire_times(self, after: datetime, until: datetime) -> Iterator[datetime]:
        """Fire times `t` with `after < t <= until`, in order."""
        when = self.next_after(after)
        while when <= until:
            yield when
            when = self.next_after(when)

    def payload_for(self, fire_time: datetime) -> Any:
        """The payload for one fire: a callable payload is given the fire time (UTC)."""
        return self.payload(fire_time) if callable(self.payload) else self.payload


def _wall_to_utc(wall: datetime, zone: ZoneInfo) -> datetime:
    """A naive wall-clock time in `zone` as a UTC instant: the first occurrence of a
    repeated time, and the moment the clock jumps for a time that does not exist."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) == wall:
        return first
    # In a gap, fold=1 reads the time with the offset after the jump (an instant before the
    # jump) and fold=0 with the offset before it (an instant after): the jump lies between.
    low = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    offset_after = first.astimezone(zone).utcoffset()
    lo, hi = int(low.timestamp()), int(first.timestamp())
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == offset_after:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)


class ScheduleRegistry:
    """Schedules known to this process, filled by `schedule(...)` as modules are imported."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._schedules: dict[str, Schedule] = {}

    def register(self, item: Schedule) -> Schedule:
        """Add `item`; re-registering an identical schedule is a no-op, another one fails."""
        with self._lock:
            existing = self._schedules.get(item.name)
            if existing is not None and existing != item:
                raise DuplicateScheduleError(item.name, "a different schedule has this name")
            self._schedules[item.name] = item
        return item

    def unregister(self, name: str) -> None:
        with self._lock:
            self._schedules.pop(name, None)

    def get(self, name: str) -> Schedule:
        try:
            return self._schedules[name]
        except KeyError:
            raise ScheduleError(name, "no schedule with this name is registered") from None

    def __iter__(self) -> Iterator[Schedule]:
        return iter(list(self._schedules.values()))

    def __len__(self) -> int:
        return len(self._schedules)

    def __contains__(self, name: object) -> bool:
        return name in self._schedules


default_schedules = ScheduleRegistry()


def schedule(
    name: str,
    *,
    job: JobDefinition[Any, Any] | str,
    payload: Payload | Callable[[datetime], Any] = None,
    cron: str | None = None,
    every: timedelta | int | None = None,
    timezone: str = "UTC",
    catch_up: CatchUp = "latest",
    catch_up_window: timedelta = DEFAULT_CATCH_UP_WINDOW,
    queue: str | None = None,
    registry: ScheduleRegistry = default_schedules,
) -> Schedule:
    """Define and register a schedule; `jobkit cron` dispatches `job` at each fire time.

    `every` takes a timedelta or seconds. Raises `ScheduleError` naming the schedule for a
    bad cron expression, an unknown time zone or catch-up policy, and
    `DuplicateScheduleError` when another schedule already has the name.
    """
    item = Schedule(
        name=name,
        job=job.name if isinstance(job, JobDefinition) else job,
        payload=payload,
        cron=cron,
        every=timedelta(seconds=every) if isinstance(every, int | float) else every,
        timezone=timezone,
        catch_up=catch_up,
        catch_up_window=catch_up_window,
        queue=queue,
    )
    return registry.register(item)


def fire_key(schedule_name: str, fire_time: datetime) -> str:
    """The idempotency key of one fire: the same in every cron process, on every engine."""
    return f"cron:{schedule_name}:{fire_time.astimezone(UTC).isoformat()}"
