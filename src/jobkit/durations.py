"""One place that turns the duration forms users write into `timedelta`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

Duration = int | float | timedelta


def to_timedelta(value: Duration) -> timedelta:
    """Seconds (int/float) or a timedelta, as a non-negative timedelta."""
    delta = value if isinstance(value, timedelta) else timedelta(seconds=value)
    if delta < timedelta(0):
        raise ValueError(f"a duration cannot be negative, got {value!r}")
    return delta


def to_seconds(value: Duration) -> float:
    return to_timedelta(value).total_seconds()


def require_aware(when: datetime, what: str = "datetime") -> datetime:
    """Naive datetimes are ambiguous across machines, so they are refused, not guessed."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, e.g. datetime.now(UTC); got {when!r}")
    return when.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)
