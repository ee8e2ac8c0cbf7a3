"""Testing helpers for applications that use jobkit.

- `inline_engine()` runs dispatched jobs in-process with a `ManualClock`, so delays,
  retry backoff and durable sleeps take no real time, in strict mode (see
  `jobkit_engine.strict`): code outside steps that Temporal would refuse fails the job.
- `wait_for_job()` polls `get_job` until a condition holds; on an inline engine with a
  `ManualClock` it skips time whenever every job waits on the clock.
- `use_engine()` points `dispatch_job` at any engine for the duration of a block.
- `RedisServer` starts a real `redis-server` on a free loopback port.
- `replay_temporal_history()` replays a job's Temporal history against the code in this
  process, to check a change against jobs in flight (needs `jobkit-dispatch[temporal]`).

The pytest plugin (loaded automatically) exposes these as fixtures: `jobkit_inline`,
`jobkit_clock`, `jobkit_strict` and the session-scoped `jobkit_redis_server`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from jobkit.errors import EngineNotInstalledError
from jobkit_dispatch._dispatch import Dispatcher, get_dispatcher, set_dispatcher
from jobkit_dispatch.engines import Engine
from jobkit_dispatch.engines.inline import InlineEngine
from jobkit_dispatch.testing.redis_server import RedisServer
from jobkit_engine import JobInfo, ManualClock, StrictMode


@contextmanager
def use_engine(engine: Engine, **dispatcher_options: Any) -> Iterator[Engine]:
    """Send every `dispatch_job` in this block to `engine`."""
    previous = set_dispatcher(Dispatcher(engine, **dispatcher_options))
    try:
        yield engine
    finally:
        set_dispatcher(previous)


@contextmanager
def inline_engine(
    clock: ManualClock | None = None, *, strict: bool | StrictMode = True, **engine_options: Any
) -> Iterator[InlineEngine]:
    """An `InlineEngine` on a `ManualClock`, installed for `dispatch_job`, closed after.

    Jobs run in strict mode unless `strict=False`; pass a `StrictMode` to tune it.
    """
    engine = InlineEngine(clock=clock or ManualClock(), strict=strict, **engine_options)
    try:
        with use_engine(engine):
            yield engine
    finally:
        engine.close()


def wait_for_job(
    job_id: str,
    until: Callable[[JobInfo], bool] = lambda info: info.is_terminal,
    *,
    timeout: float = 10.0,
    skip_time: bool = True,
) -> JobInfo:
    """Poll `get_job(job_id)` until `until(info)`; return that info.

    With `skip_time` and an inline engine on a `ManualClock`, the clock jumps to the next
    deadline whenever no job runs, as Temporal's time-skipping test server does.
    Raises `TimeoutError` (with the last state seen) after `timeout` real seconds.
    """
    dispatcher = get_dispatcher()
    deadline = time.monotonic() + timeout
    info = dispatcher.get(job_id)
    while not until(info):
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"job {job_id} did not reach the expected state in {timeout}s: {info}"
            )
        skipped = skip_time and _skip_idle_time(dispatcher, info)
        if not skipped:
            time.sleep(0.005)
        info = dispatcher.get(job_id)
    return info


def _skip_idle_time(dispatcher: Dispatcher, info: JobInfo) -> bool:
    engine = dispatcher.engine(info.engine)
    return isinstance(engine, InlineEngine) and engine.skip_idle_time()


def replay_temporal_history(
    history: Any, *, job_id: str | None = None, modules: Sequence[str] = ()
) -> None:
    """Replay a job's Temporal history (a `WorkflowHistory` or its JSON) against the jobs
    registered in this process; `StrictModeError` if they no longer replay it. See
    `jobkit_dispatch.testing.temporal_replay`."""
    _temporal_replay().replay_temporal_history(history, job_id=job_id, modules=modules)


async def areplay_temporal_history(
    history: Any, *, job_id: str | None = None, modules: Sequence[str] = ()
) -> None:
    """`replay_temporal_history`, awaitable."""
    await _temporal_replay().areplay_temporal_history(history, job_id=job_id, modules=modules)


def _temporal_replay() -> Any:
    try:
        from jobkit_dispatch.testing import temporal_replay
    except ImportError as exc:
        raise EngineNotInstalledError("temporal", "temporal", exc.name or "temporalio") from exc
    return temporal_replay


def advance(engine: Engine, delta: timedelta) -> None:
    """Let `delta` pass for `engine`: move a ManualClock, or really wait."""
    clock = getattr(engine, "clock", None)
    if isinstance(clock, ManualClock):
        clock.advance(delta)
    else:
        time.sleep(delta.total_seconds())


__all__ = [
    "InlineEngine",
    "ManualClock",
    "RedisServer",
    "StrictMode",
    "advance",
    "areplay_temporal_history",
    "inline_engine",
    "replay_temporal_history",
    "use_engine",
    "wait_for_job",
]
