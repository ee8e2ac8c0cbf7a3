"""A `jobkit worker --engine rq` subprocess, for tests and local runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType


class WorkerProcess:
    """Runs `jobkit worker` in a child process with `JOBKIT_*` overrides in `env`."""

    def __init__(
        self,
        redis_url: str,
        queues: Sequence[str],
        modules: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        concurrency: int | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.args = [sys.executable, "-m", "jobkit_dispatch.cli", "worker", "--engine", "rq"]
        for queue in queues:
            self.args += ["--queue", queue]
        for module in modules:
            self.args += ["--import", module]
        if concurrency is not None:
            self.args += ["--concurrency", str(concurrency)]
        self.env = {**os.environ, "JOBKIT_REDIS_URL": redis_url, **(env or {})}
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, wait_for_registration: float = 10.0) -> WorkerProcess:
        """Start the worker and wait until it has registered in Redis."""
        import redis

        client = redis.Redis.from_url(self.env["JOBKIT_REDIS_URL"])
        before = set(client.smembers("rq:workers"))
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(self.args, env=self.env, stdout=out, stderr=out)
        deadline = time.monotonic() + wait_for_registration
        while not set(client.smembers("rq:workers")) - before:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError("the worker did not register in time")
            time.sleep(0.02)
        client.close()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: the worker gets no chance to clean up, as in a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> WorkerProcess:
        return self if self.process is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
