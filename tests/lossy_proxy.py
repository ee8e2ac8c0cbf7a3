"""A TCP proxy in front of Redis that loses chosen replies: the command reaches Redis and
is applied, its answer never reaches the client, whose read then times out.

That is the one failure after which a client cannot know what happened (a refused
connection, by contrast, sent nothing). `lose(request)` sees each chunk the client sends;
when it says True the chunk is forwarded and everything Redis answers on that connection
from then on is dropped, until the client gives up and closes it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from types import TracebackType


class LossyProxy:
    def __init__(self, upstream_port: int, lose: Callable[[bytes], bool]) -> None:
        self.upstream_port = upstream_port
        self._lose = lose
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> LossyProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._closed = True
            sockets, self._sockets = self._sockets, []
        for sock in [self._listener, *sockets]:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._closed:
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
            muted = threading.Event()
            threading.Thread(target=self._requests, args=(client, upstream, muted)).start()
            threading.Thread(target=self._replies, args=(upstream, client, muted)).start()

    def _requests(self, client: socket.socket, upstream: socket.socket, muted: threading.Event):
        try:
            while data := client.recv(65536):
                if self._lose(data):
                    muted.set()  # before forwarding: not a byte of the answer gets through
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            _close(client, upstream)

    def _replies(self, upstream: socket.socket, client: socket.socket, muted: threading.Event):
        try:
            while data := upstream.recv(65536):
                if not muted.is_set():
                    client.sendall(data)
        except OSError:
            pass
        finally:
            _close(client, upstream)

    def __enter__(self) -> LossyProxy:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()
