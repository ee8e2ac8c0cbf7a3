"""The checks `prepare` makes of dispatch arguments besides the payload's fields: each
mistake is a specific error naming the argument and the fix."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel

from jobkit.durations import Duration, require_aware, to_timedelta
from jobkit.errors import DispatchArgumentError


def checked_delay(delay: Duration | None, at: datetime | None) -> timedelta | None:
    if delay is None:
        return None
    if at is not None:
        raise DispatchArgumentError("delay", "pass either delay= or at=, not both")
    try:
        return to_timedelta(delay)
    except ValueError:
        raise DispatchArgumentError(
            "delay", f"got {delay!r}; a delay is a duration from now, zero or more"
        ) from None


def checked_at(at: datetime) -> datetime:
    try:
        return require_aware(at, "at")
    except ValueError:
        raise DispatchArgumentError(
            "at", f"got {at!r}, a naive datetime; pass one with a time zone: datetime.now(UTC)"
        ) from None


def has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, BaseModel):
        return has_non_finite(value.model_dump())
    if isinstance(value, dict):
        return any(has_non_finite(item) for item in value.values())
    if isinstance(value, list | tuple | set | frozenset):
        return any(has_non_finite(item) for item in value)
    return False
