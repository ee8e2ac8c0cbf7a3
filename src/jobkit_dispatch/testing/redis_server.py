"""A throwaway `redis-server` on a free loopback port, for tests and `jobkit dev`."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """Start with `start()` (or `with RedisServer() as server:`), stop with `stop()`.

    Runs with `maxmemory-policy noeviction` like a production queue Redis; `appendonly`
    turns on AOF (fsync on every write) so even a SIGKILL keeps every acknowledged job.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        appendonly: bool = False,
        executable: str = "redis-server",
        password: str | None = None,
    ) -> None:
        self.port = port or free_port()
        self.appendonly = appendonly
        self.password = password  # requirepass: clients must send it
        self.executable = executable
        self._dir = Path(tempfile.mkdtemp(prefix="jobkit-redis-"))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = "" if self.password is None else f":{self.password}@"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        binary = shutil.which(self.executable)
        if binary is None:
            raise FileNotFoundError(
                f"{self.executable} is not on PATH (Debian: apt-get install -y redis-server)"
            )
        self._process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--appendfsync",
                "always",
                "--dir",
                str(self._dir),
                "--maxmemory-policy",
                "noeviction",
                "--protected-mode",
                "no",
                *(() if self.password is None else ("--requirepass", self.password)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not self._answers_ping():
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._process.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"redis-server did not answer on port {self.port}")
            time.sleep(0.01)
        return self

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                answer = s.recv(64)
                # With a password, an answer that asks for it means the server is up.
                return answer.startswith(b"+PONG") or answer.startswith(b"-NOAUTH")
        except OSError:
            return False

    def stop(self, *, kill: bool = False) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if kill:
            process.kill()
        else:
            process.terminate()
        process.wait(timeout=10)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
