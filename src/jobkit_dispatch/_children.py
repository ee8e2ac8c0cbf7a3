"""Child processes for `jobkit dev` and `jobkit worker --engine rq --engine temporal`.

A child runs in its own session, so a Ctrl-C in the terminal reaches only the parent,
which then stops its children in order (SIGTERM, and each worker finishes or hands back
its jobs). On Linux a child also gets SIGTERM when its parent dies without that chance
(SIGKILL, a crash), so no worker outlives the process that started it.
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence

import click

from jobkit.settings import JobkitSettings

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child, between fork and exec
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Child:
    """A subprocess whose output is printed line by line with a prefix, or as it is when
    the children log JSON (`JOBKIT_LOG_FORMAT=json`): each line stays one JSON object."""

    def __init__(self, label: str, args: list[str], env: dict[str, str]) -> None:
        self.label = label
        self._prefix = "" if _logs_json(env) else f"[{label}] "
        self.process = subprocess.Popen(
            args,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self._terminated = False
        self._reader = threading.Thread(target=self._relay, daemon=True)
        self._reader.start()

    def _relay(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            click.echo(f"{self._prefix}{line.rstrip()}")

    def terminate(self) -> None:
        """SIGTERM, once: a worker takes a second SIGTERM as "abort the running jobs"."""
        if not self._terminated and self.process.poll() is None:
            self._terminated = True
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float | None = 20.0) -> int:
        """SIGTERM, wait up to `timeout` seconds (None: as long as it takes), then SIGKILL."""
        self.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=2)
        return self.process.returncode


def _logs_json(env: Mapping[str, str]) -> bool:
    value = env.get("JOBKIT_LOG_FORMAT")
    if value is None:  # perhaps set in a .env file, which the child reads as well
        return JobkitSettings().log_format == "json"
    return value.strip().lower() == "json"


def worker_args(
    engine: str, queues: list[str], modules: list[str], concurrency: int | None = None
) -> list[str]:
    """The command line of one engine's worker process."""
    args = [sys.executable, "-m", "jobkit_dispatch.cli", "worker", "--engine", engine]
    for queue in queues:
        args += ["--queue", queue]
    if concurrency is not None:
        args += ["--concurrency", str(concurrency)]
    for module in modules:
        args += ["--import", module]
    return args


def supervise(children: Sequence[Child], poll: float = 0.2) -> int:
    """Run until SIGTERM/SIGINT or until a child exits; then stop them all.

    The first signal is passed on as SIGTERM, so every child shuts down gracefully; a
    second one is passed on too, and workers abort (their running jobs go back to the
    queue); a third kills them. Returns 0 after a requested stop in which every child exited
    cleanly, else the status of the child that failed (1 if it was killed by a signal):
    a worker that dies on its own must not leave its siblings serving half the engines.
    """
    stopping = threading.Event()
    signals = 0

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal signals
        signals += 1
        stopping.set()
        for child in children:
            if signals == 1:
                child.terminate()
            elif child.process.poll() is None and signals == 2:
                child.process.send_signal(signal.SIGTERM)  # a worker's "abort": jobs go back
            elif child.process.poll() is None:
                child.process.kill()

    previous: dict[int, Callable[..., object] | int | None] = {
        signum: signal.signal(signum, on_signal) for signum in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        failed: Child | None = None
        while not stopping.wait(poll):
            failed = next((c for c in children if c.process.poll() is not None), None)
            if failed is not None:
                click.echo(
                    f"{failed.label} exited ({failed.process.returncode}); stopping the others",
                    err=True,
                )
                break
        codes = [child.stop(timeout=None) for child in children]
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if failed is not None:
        code = failed.process.returncode
        return code if code and code > 0 else 1
    # Killed by the SIGTERM we sent (it came before the child set up its handler): a stop.
    code = next((code for code in codes if code and code != -signal.SIGTERM), 0)
    return 1 if code < 0 else code
