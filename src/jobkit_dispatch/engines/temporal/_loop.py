"""An event loop in a daemon thread, for the engine's temporalio client.

temporalio's client is async and tied to the event loop it was made on, so the engine
keeps one loop in a background thread: the sync methods (called from plain threads by
sync web apps) and the async ones (called from any loop) all run their calls there.

Stopping the loop waits for the calls in flight (or cancels them after a grace period)
before the loop closes: temporalio answers a call from threads of its own, and an answer
that arrives after the loop closed is an `Event loop is closed` traceback.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from jobkit.errors import EngineUnavailableError

T = TypeVar("T")

STOP_GRACE = 2.0  # seconds the calls in flight get to finish when the loop stops

_running: set[LoopThread] = set()  # started and not stopped since
_refusal = ""  # once set, why no LoopThread takes a call any more (the process exits)


def refuse_all(why: str) -> None:
    """From now on every call on every LoopThread raises `EngineUnavailableError(why)`."""
    global _refusal
    _refusal = why


def running() -> list[LoopThread]:
    """The LoopThreads whose loop runs, their engine's or one that outlived it."""
    return list(_running)


def forget_running() -> list[LoopThread]:
    """In a forked child: the LoopThreads whose threads stayed in the parent."""
    inherited = list(_running)
    _running.clear()
    return inherited


class LoopThread:
    """An event loop in a daemon thread, started on first use."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def forget_inherited(self) -> tuple[object, object]:
        """In a forked child: forget the loop and its thread, which stayed in the parent
        (the next call starts new ones); return them, for the caller to keep."""
        inherited = (self._loop, self._thread)
        self._lock = threading.Lock()  # a thread of the parent may have held it
        self._loop, self._thread = None, None
        return inherited

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            return self._started()

    def _started(self) -> asyncio.AbstractEventLoop:
        """The loop, started if need be; call with `_lock` held."""
        if self._loop is None:
            if _refusal:
                raise EngineUnavailableError(_refusal)
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name=self._name, daemon=True)
            thread.start()
            self._loop, self._thread = loop, thread
            _running.add(self)
        return self._loop

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        # Under the lock, so that `stop` cannot come between choosing the loop and
        # queueing the call on it: every call it did not see goes to a later loop.
        with self._lock:
            try:
                if _refusal:
                    raise EngineUnavailableError(_refusal)
                return asyncio.run_coroutine_threadsafe(coro, self._started())
            except EngineUnavailableError:
                coro.close()
                raise

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run `coro` on the loop and wait for it from this (non-loop) thread."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a sync engine method was called on the engine's own loop")
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise EngineUnavailableError(f"Temporal did not answer within {timeout:g}s") from None
        except concurrent.futures.CancelledError:
            raise EngineUnavailableError("the Temporal engine was closed during the call") from None

    async def arun(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await `coro` on the loop from any loop."""
        with self._lock:
            here = self._loop is not None and asyncio.get_running_loop() is self._loop
        if here:
            return await coro
        future = self.submit(coro)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if future.cancelled() and task is not None and not task.cancelling():
                # Cancelled on the engine's side (it was closed), not by the caller.
                raise EngineUnavailableError(
                    "the Temporal engine was closed during the call"
                ) from None
            raise

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop the loop once the calls in flight are over: they get `grace` seconds to
        finish, then are cancelled. A later call starts a new loop (unless refused)."""
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
            _running.discard(self)
        if loop is None or thread is None:
            return
        if thread is not threading.current_thread():
            drained = asyncio.run_coroutine_threadsafe(_drain(grace), loop)
            with contextlib.suppress(Exception):
                drained.result(2 * grace + 1)
        loop.call_soon_threadsafe(loop.stop)
        if thread is threading.current_thread():
            return  # stopped from a call on the loop: it ends after this call
        thread.join(timeout=10)
        if not thread.is_alive():
            loop.close()


async def _drain(grace: float) -> None:
    """Let the calls in flight on this loop finish within `grace` seconds, cancel the rest,
    and wait until they have ended (temporalio has answered or dropped each one)."""
    current = asyncio.current_task()
    pending = {task for task in asyncio.all_tasks() if task is not current}
    if pending:
        _, pending = await asyncio.wait(pending, timeout=grace)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=grace)
