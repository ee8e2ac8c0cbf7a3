"""Temporal workers for jobkit queues: `run_worker` (the `jobkit worker --engine temporal`
process), `serve` (the same, inside a running event loop) and `BackgroundWorker`.

Each queue spec becomes one task queue, `<prefix><queue>`, served by one temporalio
`Worker` with the queue's concurrency: at most that many of its jobs run at once on this
worker (see `_slots`), and at most that many steps.

Job modules are imported once, before the workers start, outside the workflow sandbox;
the sandbox passes them and jobkit's packages through, so the registry a workflow reads
is the one they filled and job modules may import any library. Passed through, job
modules are only partly checked by the sandbox: it refuses `open()` from anywhere, but
not the clock or random numbers, which then surface on replay as a non-determinism
error. Strict mode (`jobkit_engine.strict`, on in the inline test helpers) holds code
outside steps to the sandbox's whole list before a job reaches a worker.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from jobkit.logs import configure_logging
from jobkit.queues import QueueRegistry, default_queues
from jobkit.settings import JobkitSettings, get_settings
from jobkit_dispatch.engines.temporal._fence import FenceActivities, FenceWorkflow
from jobkit_dispatch.engines.temporal._model import SLOT_SIGNAL, TERMINATION_KEY, ErrorState
from jobkit_dispatch.engines.temporal._slots import SlotPool, register_pool, unregister_pool
from jobkit_dispatch.engines.temporal._steps import remember_worker_modules
from jobkit_dispatch.engines.temporal._unknown import (
    FailsTheWorkflow,
    serve_task_queue,
    stop_serving,
    terminate_with,
)
from jobkit_dispatch.engines.temporal._watchdog import ActivationWatchdog
from jobkit_dispatch.engines.temporal.activities import SlotActivities, run_step
from jobkit_dispatch.engines.temporal.workflow import JobWorkflow
from jobkit_engine import JobError, default_registry, import_job_modules

if TYPE_CHECKING:
    from jobkit_dispatch.engines.temporal.engine import TemporalEngine

log = logging.getLogger("jobkit.temporal.worker")

JOBKIT_PACKAGES = ("jobkit", "jobkit_engine", "jobkit_dispatch")

#: How long a stopping worker lets running steps finish before it cancels them.
GRACEFUL_SHUTDOWN = timedelta(seconds=30)

#: How often at most a running step's heartbeat goes to the server. A cancellation reaches
#: an `async` step function in the reply to a heartbeat, so this is also how late it may
#: arrive (temporalio's default is 80% of the heartbeat timeout, 24 s for jobkit's 30 s).
HEARTBEAT_THROTTLE = timedelta(seconds=1)


def sandbox_restrictions(modules: Sequence[str] = ()) -> SandboxRestrictions:
    """Temporal's default restrictions, with jobkit, the job `modules` and the modules of
    every registered job passed through."""
    job_modules = sorted({definition.handler.__module__ for definition in default_registry})
    restrictions = SandboxRestrictions.default.with_passthrough_modules(
        *JOBKIT_PACKAGES, *modules, *job_modules
    )
    return restrictions


async def serve(
    client: Client,
    queues: Sequence[str],
    *,
    stop: asyncio.Event,
    task_queue_prefix: str = "jobkit-",
    concurrency: int | None = None,
    modules: Sequence[str] = (),
    queue_registry: QueueRegistry = default_queues,
    on_started: Callable[[], None] | None = None,
    unknown_job_grace: float | None = None,
    settings: JobkitSettings | None = None,
    **worker_options: Any,
) -> None:
    """Serve `queues` until `stop` is set, then shut down gracefully.

    A job this worker does not know is left to a worker that knows it for
    `unknown_job_grace` seconds (default: the setting) before it fails (`_unknown`).
    `settings` name the queue Redis, for jobs that must settle with RQ before they run
    (`_fence`; default: the process's settings). `worker_options` go to every temporalio
    `Worker` (e.g. `max_cached_workflows`).
    """
    loop = asyncio.get_running_loop()
    remember_worker_modules()
    if unknown_job_grace is None:
        unknown_job_grace = (settings or get_settings()).unknown_job_grace
    task_queues = [f"{task_queue_prefix}{queue_registry.get(name).name}" for name in queues]
    for task_queue in task_queues:
        serve_task_queue(task_queue, unknown_job_grace, partial(terminate_with, client), loop)
    runner = SandboxedWorkflowRunner(restrictions=sandbox_restrictions(modules))
    workers: list[Worker] = []
    pools: list[SlotPool] = []
    watchdogs: list[ActivationWatchdog] = []
    fence = FenceActivities(settings)

    async def nudge(job_id: str) -> None:
        await client.get_workflow_handle(job_id).signal(SLOT_SIGNAL)

    try:
        for name in queues:
            spec = queue_registry.get(name)
            size = concurrency or spec.concurrency
            pool = register_pool(SlotPool(size, nudge, loop))
            pools.append(pool)
            options = _worker_options(client, pool, size, worker_options)
            if isinstance(options["workflow_task_executor"], ActivationWatchdog):
                watchdogs.append(options["workflow_task_executor"])
            workers.append(
                Worker(
                    client,
                    task_queue=f"{task_queue_prefix}{spec.name}",
                    workflows=[JobWorkflow, FenceWorkflow],
                    activities=[run_step, SlotActivities(pool).acquire_slot, fence.fence_rq],
                    workflow_runner=runner,
                    **options,
                )
            )
        await _run_until(workers, stop, on_started)
    finally:
        for pool in pools:
            unregister_pool(pool)
        for task_queue in task_queues:
            stop_serving(task_queue)
        for watchdog in watchdogs:  # a thread still blocked in job code is not waited for
            watchdog.shutdown(wait=False)


def _worker_options(
    client: Client, pool: SlotPool, size: int, worker_options: dict[str, Any]
) -> dict[str, Any]:
    """The `Worker` options of one queue: jobkit's defaults, then the caller's."""

    async def terminate(workflow_id: str, run_id: str, error: JobError) -> None:
        details = {TERMINATION_KEY: ErrorState.of(error).model_dump()}
        handle = client.get_workflow_handle(workflow_id, run_id=run_id)
        try:
            await handle.terminate(details, reason=f"jobkit: {error.type}")
        except RPCError as exc:  # it closed meanwhile
            log.warning("could not terminate job %s: %s", workflow_id, exc)
        pool.release_job(workflow_id)

    options: dict[str, Any] = {
        "max_concurrent_activities": size,
        "graceful_shutdown_timeout": GRACEFUL_SHUTDOWN,
        # A workflow whose replay diverges from its history (a NondeterminismError), or
        # that cannot even start (an input it cannot decode), fails with the cause instead
        # of retrying its workflow task forever: Temporal would replay the same code.
        # Only a job this worker does not know fails its task, for another worker to take.
        "workflow_failure_exception_types": [FailsTheWorkflow],
        "max_heartbeat_throttle_interval": HEARTBEAT_THROTTLE,
        "default_heartbeat_throttle_interval": HEARTBEAT_THROTTLE,
        **worker_options,
    }
    if "workflow_task_executor" not in options:
        options["workflow_task_executor"] = ActivationWatchdog(
            terminate, max_workers=options.get("max_concurrent_workflow_tasks") or 500
        )
    return options


async def _run_until(
    workers: list[Worker], stop: asyncio.Event, on_started: Callable[[], None] | None
) -> None:
    runs = [asyncio.create_task(worker.run()) for worker in workers]
    stopped = asyncio.create_task(stop.wait())
    if on_started is not None:
        on_started()
    try:
        done, _ = await asyncio.wait([*runs, stopped], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        await asyncio.gather(*(w.shutdown() for w in workers), return_exceptions=True)
        outcomes = await asyncio.gather(*runs, return_exceptions=True)
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    if stopped not in done and failures:  # a worker ended on its own: that is a failure
        raise failures[0]


def run_worker(
    queues: list[str],
    modules: list[str],
    settings: JobkitSettings,
    concurrency: int | None = None,
    **worker_options: Any,
) -> None:
    """Run a Temporal worker for `queues` until SIGTERM or SIGINT.

    The first signal stops polling and lets running steps finish (up to
    `GRACEFUL_SHUTDOWN`); a second one exits at once (Temporal retries the steps that were
    cut off on another worker, after their heartbeat timeout).
    """
    import_job_modules(modules)
    configure_logging(settings.log_format)
    asyncio.run(_main(queues, modules, settings, concurrency, worker_options))
    # temporalio's core runtime finishes tearing down in the background; an interpreter
    # that exits at that very moment can crash, so give it a moment.
    time.sleep(0.5)


async def _main(
    queues: list[str],
    modules: list[str],
    settings: JobkitSettings,
    concurrency: int | None,
    worker_options: dict[str, Any],
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = [0]

    def on_signal(signum: int) -> None:
        signals[0] += 1
        if signals[0] > 1:
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(128 + signum)
        log.info("%s: finishing running steps, then stopping", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    client = await _connect_until_stopped(settings, stop)
    if client is None:
        log.info("stopped before Temporal at %s answered", settings.temporal_address)
        return
    log.info("serving %s on Temporal at %s", ", ".join(queues), settings.temporal_address)
    await serve(
        client,
        queues,
        stop=stop,
        task_queue_prefix=settings.temporal_task_queue_prefix,
        concurrency=concurrency,
        modules=modules,
        unknown_job_grace=settings.unknown_job_grace,
        settings=settings,
        **worker_options,
    )


async def _connect_until_stopped(settings: JobkitSettings, stop: asyncio.Event) -> Client | None:
    """Connect to Temporal, retrying (up to every 30 s) until it answers or `stop` is set.

    A Temporal that is down when the worker starts is an outage, as for RQ workers: the
    worker waits for it, logging, instead of exiting — which, under `jobkit worker
    --engine all`, would also stop the RQ workers that can serve meanwhile.
    """
    delay, failures = 1.0, 0
    while not stop.is_set():
        try:
            return await Client.connect(
                settings.temporal_address,
                namespace=settings.temporal_namespace,
                data_converter=pydantic_data_converter,
            )
        except Exception as exc:  # temporalio raises RuntimeError for an unreachable server
            failures += 1
            if failures == 1 or failures % 10 == 0:
                log.warning(
                    "Temporal at %s is unreachable (%s); retrying every %.0f s at most",
                    settings.temporal_address,
                    exc,
                    30.0,
                )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, 30.0)
    return None


class BackgroundWorker:
    """`serve` on a `TemporalEngine`'s own loop and connection, for tests and `jobkit dev`.

    Sharing the engine's client lets a dispatch from this process start the job on this
    worker directly (eager start), without a round trip through the task queue.
    """

    def __init__(
        self,
        engine: TemporalEngine,
        queues: Sequence[str],
        *,
        concurrency: int | None = None,
        **worker_options: Any,
    ) -> None:
        self.engine = engine
        self.queues = list(queues)
        self._concurrency = concurrency
        self._options = worker_options
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._future: concurrent.futures.Future[None] | None = None

    def start(self, timeout: float = 10.0) -> BackgroundWorker:
        self._future = self.engine._loop.submit(self._serve())
        deadline = time.monotonic() + timeout
        while not self._started.wait(0.01):
            if self._future.done():
                self._future.result()  # raises why it could not start
            if time.monotonic() > deadline:
                raise TimeoutError(f"the worker for {self.queues} did not start in {timeout}s")
        return self

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        await serve(
            await self.engine.client(),
            self.queues,
            stop=self._stop,
            task_queue_prefix=self.engine.task_queue_prefix,
            concurrency=self._concurrency,
            on_started=self._started.set,
            settings=self.engine.settings,
            **self._options,
        )

    def stop(self, timeout: float = 60.0) -> None:
        """Stop polling, let running steps finish, and wait for the workers to end."""
        future, stop = self._future, self._stop
        if future is None or stop is None:
            return
        self.engine._loop.loop.call_soon_threadsafe(stop.set)
        future.result(timeout)
        self._future = None
        if self in self.engine._workers:
            self.engine._workers.remove(self)

    def __enter__(self) -> BackgroundWorker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
