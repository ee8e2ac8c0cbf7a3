"""Health probes: cheap, bounded in time, and never raising."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis import Redis


@dataclass(frozen=True)
class Health:
    """The answer of a probe: `ok`, and when not ok a one-line `detail` safe to log."""

    ok: bool
    detail: str = ""
    latency: float = 0.0


def probe_redis(client: Redis) -> Health:
    """PING `client`; the client's own socket timeouts bound how long this can take."""
    started = time.perf_counter()
    try:
        client.ping()
    except Exception as exc:  # any failure means "not healthy", whatever redis-py raised
        return Health(False, f"{type(exc).__name__}: {exc}", time.perf_counter() - started)
    return Health(True, "", time.perf_counter() - started)
