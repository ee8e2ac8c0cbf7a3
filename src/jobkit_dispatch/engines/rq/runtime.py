"""`jobkit worker --engine rq`: one process per queue, signals, graceful shutdown.

Job modules are imported once, in the parent, before any process starts working; each
queue then gets its own forked process (so a slow `data_sync` job never starves
`default`), and each process runs up to the queue's concurrency of jobs at once.
The first SIGTERM/SIGINT finishes running jobs and stops fetching; a second one
interrupts them, and they go back to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from jobkit.errors import ConfigurationError
from jobkit.logs import configure_logging
from jobkit.settings import JobkitSettings
from jobkit_dispatch.engines.rq.worker import RQWorker
from jobkit_engine import import_job_modules

log = logging.getLogger("jobkit.worker")


def run_worker(
    queues: Sequence[str],
    modules: Sequence[str],
    settings: JobkitSettings,
    concurrency: int | None = None,
) -> None:
    """Serve `queues` until signalled. Blocks; exits non-zero if a queue process failed."""
    import_job_modules(modules)
    configure_logging(settings.log_format)
    if len(queues) == 1:
        asyncio.run(serve_queue(queues[0], settings, concurrency))
        return
    context = multiprocessing.get_context("fork")
    children = [
        context.Process(target=_serve_in_child, args=(q, settings, concurrency), name=f"jobkit-{q}")
        for q in queues
    ]
    for child in children:
        child.start()

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.pid is not None and child.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in children:
        child.join()
    if any(child.exitcode for child in children):
        sys.exit(1)


def _serve_in_child(queue: str, settings: JobkitSettings, concurrency: int | None) -> None:
    # Out of the terminal's process group: a Ctrl-C reaches the parent only, which forwards
    # it once, so one Ctrl-C means "finish and stop", not "abort".
    os.setpgrp()
    _stop_with_parent()
    asyncio.run(serve_queue(queue, settings, concurrency))


def _stop_with_parent() -> None:
    """Ask Linux to send this process SIGTERM when its parent dies (even by SIGKILL), so a
    killed `jobkit worker` leaves no queue process behind. Elsewhere, do nothing."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


async def serve_queue(queue: str, settings: JobkitSettings, concurrency: int | None = None) -> None:
    """Run one queue's worker in this event loop, with signal handling."""
    worker = RQWorker(queue, settings=settings, concurrency=concurrency)
    loop = asyncio.get_running_loop()
    # A thread per job slot for synchronous step functions, on top of what asyncio would
    # give the loop (CPUs + 4, also used for DNS lookups when Redis reconnects). With the
    # default pool alone (at most 32), a step let start could wait behind other jobs' steps
    # and start long after a cancel that came meanwhile had returned True.
    threads = worker.concurrency + (os.cpu_count() or 1) + 4
    loop.set_default_executor(
        ThreadPoolExecutor(max_workers=threads, thread_name_prefix="jobkit-worker")
    )
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            worker.stop()
        else:
            worker.abort()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)
    try:
        await worker.run()
    except ConfigurationError as exc:  # e.g. a wrong Redis password: no use waiting
        log.error("worker for queue %r cannot run: %s", queue, exc)
        raise SystemExit(2) from None
