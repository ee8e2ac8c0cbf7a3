"""The `jobkit` command: inspect jobs and queues, run a job inline, run workers and cron.

The commands that find and recover jobs (`list`, `show`, `retry`, `cancel`, `purge`) are
in `cli_jobs.py`.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, TypeVar

import click

import jobkit
from jobkit.errors import ConfigurationError, JobkitError, install_hint
from jobkit.queues import default_queues
from jobkit.settings import get_settings
from jobkit_dispatch._cli_shared import import_option as _import_option
from jobkit_dispatch._cli_shared import load_jobs as _load_jobs
from jobkit_dispatch.cli_jobs import JOB_COMMANDS
from jobkit_engine import default_registry

F = TypeVar("F", bound=Callable[..., Any])

WORKER_RUNTIMES = {
    "rq": "jobkit_dispatch.engines.rq.runtime:run_worker",
    "temporal": "jobkit_dispatch.engines.temporal.worker:run_worker",
}


def _queue_option(verb: str) -> Callable[[F], F]:
    return click.option(
        "--queue",
        "-q",
        "queues",
        multiple=True,
        metavar="QUEUE",
        help=f"Queue to {verb} (repeatable); default: every registered queue.",
    )


def _queue_names(queues: tuple[str, ...]) -> list[str]:
    return list(queues) or [spec.name for spec in default_queues]


@click.group()
@click.version_option(jobkit.__version__, prog_name="jobkit")
def main() -> None:
    """Background jobs on RQ, Temporal or inline."""
    try:  # settings mistakes are reported before any command runs, not met halfway
        get_settings()
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command("jobs")
@_import_option
def list_jobs(modules: tuple[str, ...]) -> None:
    """List the registered jobs."""
    _load_jobs(modules)
    for definition in default_registry:
        timeout = definition.timeout or default_queues.get(definition.queue).default_timeout
        click.echo(
            f"{definition.name:32} queue={definition.queue:12} "
            f"attempts={definition.retry.attempts} timeout={timeout}  {definition.ref}"
        )


@main.command("queues")
@_import_option
def list_queues(modules: tuple[str, ...]) -> None:
    """List the queues with their concurrency and default timeout."""
    _load_jobs(modules)
    for spec in default_queues:
        click.echo(
            f"{spec.name:16} concurrency={spec.concurrency:<4} "
            f"timeout={spec.default_timeout}  {spec.description}"
        )


@main.command("run")
@click.argument("job_name")
@click.argument("payload", required=False, default="null")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait.")
@_import_option
def run_job(job_name: str, payload: str, timeout: float, modules: tuple[str, ...]) -> None:
    """Run JOB_NAME once on the inline engine with PAYLOAD (JSON) and print the outcome.

    Sleeps and retry backoff are skipped, so this returns as soon as the job is done.
    """
    from jobkit_dispatch import dispatch_job
    from jobkit_dispatch.testing import inline_engine, wait_for_job

    _load_jobs(modules)
    try:
        data = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"PAYLOAD is not JSON: {exc}") from exc
    with inline_engine(strict=False):  # as a worker runs it; tests add strict mode
        try:
            dispatched = dispatch_job(job_name, data)
            info = wait_for_job(dispatched.job_id, timeout=timeout)
        except JobkitError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(_jsonable(asdict(info)), indent=2, default=str))
    sys.exit(0 if info.status == "succeeded" else 1)


def _jsonable(value: Any) -> Any:
    from jobkit_engine.runtime import to_json

    return to_json(value)


@main.command("worker")
@click.option(
    "--engine",
    "engines",
    type=click.Choice([*sorted(WORKER_RUNTIMES), "all"]),
    multiple=True,
    help="Engine to serve (repeatable; 'all' for every one); default: rq. With more "
    "than one, each runs in a child process and all stop together.",
)
@_queue_option("serve")
@click.option(
    "--concurrency",
    "-c",
    type=int,
    default=None,
    help="Jobs run at once per queue; default: the queue spec's concurrency.",
)
@_import_option
def worker(
    engines: tuple[str, ...],
    queues: tuple[str, ...],
    concurrency: int | None,
    modules: tuple[str, ...],
) -> None:
    """Run a worker for QUEUEs on ENGINE; only registered jobs are ever run.

    SIGTERM or Ctrl-C stops it gracefully: running jobs finish or are handed back.
    """
    names = _load_jobs(modules)
    served = _queue_names(queues)
    for name in served:
        try:
            default_queues.get(name)
        except ConfigurationError as exc:
            raise click.BadParameter(str(exc), param_hint="--queue") from exc
    _require_jobs(served)
    chosen = sorted(WORKER_RUNTIMES) if "all" in engines else sorted(set(engines) or {"rq"})
    if len(chosen) > 1:
        sys.exit(_supervise_workers(chosen, served, concurrency, names))
    engine = chosen[0]
    module_name, _, function = WORKER_RUNTIMES[engine].partition(":")
    try:
        runtime = getattr(importlib.import_module(module_name), function)
    except ImportError as exc:
        raise click.ClickException(f"the {engine} worker is not available: {exc}") from exc
    runtime(queues=served, modules=names, settings=get_settings(), concurrency=concurrency)


def _require_jobs(queues: list[str]) -> None:
    """A worker without its job modules would count as a live worker, take jobs and fail
    each one with UnknownJobError: refuse to start instead, and say what is missing."""
    if not default_registry.names():
        raise click.ClickException(
            "no jobs are registered, so this worker could run none of the jobs it takes: "
            "import the modules that define them (--import myapp.jobs, or "
            "JOBKIT_JOB_MODULES=myapp.jobs)"
        )
    defaults = {definition.queue for definition in default_registry}
    for queue in queues:
        if queue not in defaults:
            click.echo(
                f"warning: no registered job has queue {queue!r} as its queue; this worker "
                "serves it only for jobs dispatched there with queue=...",
                err=True,
            )


def _supervise_workers(
    engines: list[str], queues: list[str], concurrency: int | None, modules: list[str]
) -> int:
    from jobkit_dispatch._children import Child, supervise, worker_args

    env = dict(os.environ)
    children = [
        Child(engine, worker_args(engine, queues, modules, concurrency), env) for engine in engines
    ]
    return supervise(children)


@main.command("dev", context_settings={"ignore_unknown_options": True})
@click.option("--demo", is_flag=True, help="Dispatch example jobs, stop Redis, show the fallback.")
@_queue_option("run workers for")
@_import_option
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def dev(
    demo: bool, queues: tuple[str, ...], modules: tuple[str, ...], command: tuple[str, ...]
) -> None:
    """Run Redis, the Temporal dev server and workers here; Ctrl-C stops them.

    With `-- COMMAND`, run COMMAND once the workers are up, with the stack's
    JOBKIT_* settings in its environment, then stop everything and exit with its status.
    """
    from jobkit_dispatch.dev import run_dev

    if demo and command:
        raise click.UsageError("--demo and COMMAND do not go together")
    names = _load_jobs(modules)
    sys.exit(run_dev(queues, names, demo, command))


@main.command("stats")
@_queue_option("report")
@_import_option
def stats(queues: tuple[str, ...], modules: tuple[str, ...]) -> None:
    """Show each RQ queue's jobs by state, its live workers, and how many ids that named
    no job were quarantined (LRANGE jobkit:quarantine:QUEUE 0 -1 lists them)."""
    from redis.exceptions import RedisError

    from jobkit.connection import get_redis
    from jobkit.settings import redact_url
    from jobkit_dispatch.engines.rq.stats import queue_stats

    _load_jobs(modules)
    settings = get_settings()
    names = _queue_names(queues)
    try:
        rows = queue_stats(get_redis(settings=settings), names, settings)
    except (RedisError, OSError) as exc:
        raise click.ClickException(
            f"Redis at {redact_url(settings.redis_url)} did not answer ({type(exc).__name__})"
        ) from exc
    columns = ("queued", "scheduled", "running", "finished", "failed", "cancelled")
    extra = ("workers", "quarantined")
    click.echo(f"{'queue':16}" + "".join(f"{c:>12}" for c in (*columns, *extra)))
    for row in rows:
        counts = [row.states[c] for c in columns] + [row.live_workers, row.quarantined]
        click.echo(f"{row.queue:16}" + "".join(f"{n:>12}" for n in counts))


@main.command("metrics")
@click.option("--port", type=int, default=9108, show_default=True, help="Port to serve on.")
@click.option("--bind", default="127.0.0.1", show_default=True, help="Address to serve on.")
@_queue_option("report")
@_import_option
def metrics(port: int, bind: str, queues: tuple[str, ...], modules: tuple[str, ...]) -> None:
    """Serve Prometheus metrics of the RQ queues on http://BIND:PORT/metrics until SIGTERM.

    Needs jobkit-dispatch[metrics]. Redis is read at each scrape; one such process covers every
    queue and worker.
    """
    import signal
    import threading

    try:
        from prometheus_client import CollectorRegistry, start_http_server

        from jobkit_dispatch.metrics import RQQueueCollector
    except ImportError as exc:
        raise click.ClickException(f"metrics need {install_hint('metrics')}: {exc}") from exc
    from jobkit.connection import get_redis

    _load_jobs(modules)
    settings = get_settings()
    names = _queue_names(queues)
    registry = CollectorRegistry()
    registry.register(RQQueueCollector(get_redis(settings=settings), names, settings))
    server, thread = start_http_server(port, addr=bind, registry=registry)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    click.echo(f"serving metrics on http://{bind}:{server.server_port}/metrics", err=True)
    stop.wait()
    server.shutdown()
    thread.join(5)


@main.command("cron")
@click.option(
    "--grace",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds a fire time may be late and still count as on time (not missed).",
)
@_import_option
def cron(grace: float, modules: tuple[str, ...]) -> None:
    """Dispatch the schedules MODULEs define, each fire time once; run one or several."""
    from datetime import timedelta

    from jobkit.connection import get_redis
    from jobkit_dispatch.cron import run_cron

    _load_jobs(modules)
    try:
        run_cron(get_redis(), grace=timedelta(seconds=grace))
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from exc


for _command in JOB_COMMANDS:  # jobkit list / show / retry / cancel / purge
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    main()
