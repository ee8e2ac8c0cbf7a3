"""pytest fixtures for jobkit users; loaded automatically when jobkit is installed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from jobkit_dispatch.engines.inline import InlineEngine
from jobkit_dispatch.testing import inline_engine
from jobkit_dispatch.testing.redis_server import RedisServer
from jobkit_dispatch.testing.temporal_server import TemporalDevServer, TimeSkippingServer
from jobkit_engine import ManualClock, StrictMode


@pytest.fixture
def jobkit_clock() -> ManualClock:
    """The ManualClock `jobkit_inline` runs on: `jobkit_clock.advance(timedelta(hours=1))`."""
    return ManualClock()


@pytest.fixture
def jobkit_strict() -> bool | StrictMode:
    """Whether `jobkit_inline` runs jobs in strict mode: True. Override this fixture (in a
    test module or a conftest.py) to return False, or a `StrictMode(...)` to tune it."""
    return True


@pytest.fixture
def jobkit_inline(
    jobkit_clock: ManualClock, jobkit_strict: bool | StrictMode
) -> Iterator[InlineEngine]:
    """`dispatch_job` runs jobs on an inline engine, in strict mode, for the duration of
    the test."""
    with inline_engine(jobkit_clock, strict=jobkit_strict) as engine:
        yield engine


@pytest.fixture(scope="session")
def jobkit_redis_server() -> Iterator[RedisServer]:
    """A real `redis-server` on a free loopback port, for the whole test session."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def jobkit_temporal_server() -> Iterator[TemporalDevServer]:
    """A Temporal dev server (`temporal server start-dev`) on a free loopback port, in
    memory, for the whole test session. Connect with `jobkit_temporal_server.address`."""
    with TemporalDevServer() as server:
        yield server


@pytest.fixture(scope="session")
def jobkit_temporal_time_skipping_server() -> Iterator[TimeSkippingServer]:
    """Temporal's time-skipping test server for the whole test session; time skips once a
    test calls `unlock_time_skipping()` on it."""
    with TimeSkippingServer() as server:
        yield server
