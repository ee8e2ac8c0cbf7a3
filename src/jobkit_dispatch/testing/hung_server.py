"""A hung server for tests: a loopback port that accepts connections and never answers.

This is how a stopped process (SIGSTOP), a frozen VM or a wedged server looks to a client:
the TCP connection opens, then nothing comes back, so the client waits for its own
timeout. (A dead server, a closed port, is refused at once and is the easy case.)

`connections` counts the connections accepted, so a test can check that a client stopped
trying after the first failure, without timing anything.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType


class HungServer:
    """Listens on `127.0.0.1:port` (a free one by default) until `close()`; every connection
    is accepted, held open and never answered."""

    def __init__(self, port: int = 0) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._held: list[socket.socket] = []
        self._accepted = 0
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="hung-server", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        """`host:port`, as Temporal addresses are written."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """A Redis URL pointing here."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def connections(self) -> int:
        """How many connections were accepted so far."""
        with self._lock:
            return self._accepted

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # closed
                return
            with self._lock:
                if self._closed:
                    conn.close()
                    return
                self._held.append(conn)
                self._accepted += 1

    def close(self) -> None:
        """Stop listening and drop every held connection (clients see them reset)."""
        with self._lock:
            self._closed = True
            held, self._held = self._held, []
        with contextlib.suppress(OSError):  # not connected: nothing to shut down
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(timeout=5)
        for conn in held:
            conn.close()

    def __enter__(self) -> HungServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
