"""The engine's connection to Temporal, and whether Temporal answers: a hung server costs
one call, not every call.

A Temporal that does not answer (a connect that hangs, RPCs that time out) would otherwise
cost every call its full timeout. So the connection keeps a circuit breaker:

- a call that fails because Temporal did not answer (or refused) opens it, unless another
  call got an answer while this one waited: then the server is busy, not gone;
- while it is open, every call fails at once with the remembered cause, and the
  dispatcher's availability check answers from it without a network call;
- once the cool-down has passed, the first call starts a probe (connect, then a health
  check) in the background and still fails at once: no caller ever waits on a probe. The
  probe's answer closes the circuit, or keeps it open for another cool-down.

Callers that arrive while a connect is under way wait for that same attempt (bounded by
the connect timeout) instead of queueing up to try again one after the other.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RetryConfig, RPCError

from jobkit.circuit import CircuitBreaker
from jobkit.errors import EngineUnavailableError, JobkitError
from jobkit_dispatch.engines.temporal import _process
from jobkit_dispatch.engines.temporal._loop import LoopThread


def describe(exc: BaseException) -> str:
    """`Type: message`, never blank (`str(TimeoutError())` is empty)."""
    text = str(exc).strip()
    if not text and isinstance(exc, TimeoutError):
        text = "no answer in time"
    return f"{type(exc).__name__}: {text or 'no detail given'}"


class Connection:
    """One engine's client (connected on first use, on `loop`) and its circuit breaker."""

    def __init__(
        self,
        address: str,
        namespace: str,
        loop: LoopThread,
        *,
        connect_timeout: float,
        rpc_timeout: float,
        cool_down: float,
    ) -> None:
        self.address = address
        self.namespace = namespace
        self.connect_timeout = connect_timeout
        self.rpc_timeout = rpc_timeout
        # A probe connects and asks once: it reports within both timeouts.
        self.breaker = CircuitBreaker(cool_down, probe_timeout=connect_timeout + rpc_timeout)
        self._loop = loop
        self._client: Client | None = None
        self._connecting: asyncio.Future[Client] | None = None
        self._answered_at = float("-inf")  # monotonic time of the last answer from Temporal

    # -- the client (on the engine's loop) ---------------------------------------------

    async def client(self) -> Client:
        """The connected client. Concurrent callers share one connect attempt."""
        if self._client is None:
            attempt = self._connecting
            if attempt is None or (attempt.done() and _attempt_failed(attempt)):
                attempt = self._connecting = asyncio.ensure_future(self._connect())
                attempt.add_done_callback(_attempt_failed)
            self._client = await asyncio.shield(attempt)
        return self._client

    def reset(self) -> None:
        """Forget the client (the engine's loop is going away)."""
        self._client, self._connecting = None, None

    def forget_inherited(self) -> tuple[object, object]:
        """In a forked child: forget the parent's client, whose threads stayed in the
        parent (the next call connects again); return it, for the caller to keep."""
        inherited = (self._client, self._connecting)
        self.reset()
        return inherited

    async def _connect(self) -> Client:
        where = f"cannot connect to Temporal at {self.address}"
        try:
            return await asyncio.wait_for(
                Client.connect(
                    self.address,
                    namespace=self.namespace,
                    data_converter=pydantic_data_converter,
                    runtime=_process.runtime(),  # a forked child's own
                    # A few quick retries: a dead server must not hold a dispatch for long.
                    retry_config=RetryConfig(
                        initial_interval_millis=50,
                        max_interval_millis=500,
                        max_elapsed_time_millis=int(self.rpc_timeout * 1000),
                        max_retries=3,
                    ),
                ),
                self.connect_timeout,
            )
        except TimeoutError as exc:
            why = f"TimeoutError: no answer within {self.connect_timeout:g} s"
            raise EngineUnavailableError(f"{where}: {why}") from exc
        except (RuntimeError, OSError, RPCError) as exc:
            raise EngineUnavailableError(f"{where}: {describe(exc)}") from exc

    # -- the breaker ------------------------------------------------------------------

    def refusal(self) -> str | None:
        """Why calls skip Temporal now, or None. The caller that finds the cool-down over
        starts the background probe (and skips too)."""
        if not self.breaker.is_open:
            return None
        why = self.breaker.last_failure
        if self.breaker.allow():
            if not self.breaker.is_open:  # closed in between
                return None
            self._loop.submit(self._probe())
        return f"{why} (circuit open)"

    @contextmanager
    def call(self) -> Iterator[None]:
        """Around one call to Temporal (also around an `await`): refuse at once while the
        circuit is open; report what happened to the breaker."""
        why = self.refusal()
        if why is not None:
            raise EngineUnavailableError(why)
        started = time.monotonic()
        try:
            yield
        except EngineUnavailableError as exc:
            why = str(exc) or describe(exc)
            self._failed(
                why if self.address in why else f"Temporal at {self.address}: {why}", started
            )
            raise
        except JobkitError:  # not found, a conflict...: Temporal answered
            self._answered()
            raise
        self._answered()

    def _answered(self) -> None:
        self._answered_at = time.monotonic()
        if self.breaker.is_open:
            self.breaker.success()

    def _failed(self, why: str, started: float) -> None:
        if self._answered_at >= started:
            return  # Temporal answered another call meanwhile: slow or busy, not gone
        self.breaker.failure(why)

    async def _probe(self) -> None:
        started, timeout = time.monotonic(), self.breaker.probe_timeout
        try:
            client = await asyncio.wait_for(self.client(), timeout)
            if not await client.service_client.check_health(
                timeout=timedelta(seconds=self.rpc_timeout)
            ):
                raise RuntimeError("the server reports that it is not serving")
        except EngineUnavailableError as exc:
            self._failed(str(exc), started)
        except Exception as exc:  # whatever the client raised: still no answer
            self._failed(f"Temporal at {self.address}: health check: {describe(exc)}", started)
        else:
            self._answered()


def _attempt_failed(attempt: asyncio.Future[Client]) -> bool:
    """Whether a finished connect attempt failed. Also its done-callback: it marks the
    error as seen when every caller gave up waiting for it (no "never retrieved" log)."""
    return attempt.cancelled() or attempt.exception() is not None
