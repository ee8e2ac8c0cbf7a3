"""Starting a job's workflow, also under a burst: a bounded number in flight, one deadline
per start, and a start the server was too busy to answer tried again — exactly once.

A fallback burst is hundreds of dispatches at once. Sent all at once, their starts queue
up inside a busy server (or one on a loaded machine) until many pass their RPC timeout,
and production servers push back with `RESOURCE_EXHAUSTED` as well. So the starts of one
engine go through a `StartGate`:

- at most `limit` of them are in flight; the others wait here, in order (back-pressure:
  the server works on a few at a time, each answered quickly);
- each start has one deadline, `timeout`, for the wait and every attempt together;
- an attempt that timed out or was pushed back is tried again until that deadline, as
  long as the server is answering other starts meanwhile (busy, not hung). A server that
  answered no start for `rpc_timeout` is not waited for: the start fails as unavailable
  after one attempt, as do the starts waiting behind it, and the dispatcher falls back.

Exactly once: an attempt that timed out may have been applied. The next attempt then
meets the workflow it started (`WorkflowAlreadyStartedError`: a new attempt is a new
request to the server). Each start writes a token of its own into the workflow's memo
(`DISPATCH_KEY`, a key the workflow never rewrites), so a conflict after such an attempt
is told apart by reading it back: this start's token means the job was created by this
dispatch; another one, that it existed before.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

from temporalio.client import Client
from temporalio.common import (
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from jobkit.errors import EngineUnavailableError
from jobkit_dispatch.engines.temporal._attributes import Registration
from jobkit_dispatch.engines.temporal._model import WORKFLOW_NAME, JobInput, JobState

DISPATCH_KEY = "jobkit_dispatch"
"""The memo key holding the token of the dispatch that started the workflow."""

# The client's own timeout (CANCELLED, "Timeout expired") or the server's
# (DEADLINE_EXCEEDED): the start may or may not have been applied.
_UNANSWERED = {RPCStatusCode.CANCELLED, RPCStatusCode.DEADLINE_EXCEEDED}
# Refused before anything was written: the server asks to be called again later.
_PUSHED_BACK = {RPCStatusCode.RESOURCE_EXHAUSTED}

_FIRST_BACKOFF = 0.05  # seconds before an attempt is made again, doubled each time
_MAX_BACKOFF = 1.0


@dataclass(frozen=True)
class Started:
    """This start created the workflow."""


@dataclass(frozen=True)
class Conflict:
    """A workflow with the id exists; `maybe_ours` when an earlier attempt of this start
    may have created it."""

    run_id: str | None
    maybe_ours: bool


class StartGate:
    """Bounds the workflow starts of one engine in flight; see the module docstring."""

    def __init__(self, address: str, *, limit: int, timeout: float, rpc_timeout: float) -> None:
        self.address = address
        self.limit = limit
        self.timeout = timeout
        self.rpc_timeout = rpc_timeout
        self._slots: asyncio.Semaphore | None = None
        self._slots_loop: asyncio.AbstractEventLoop | None = None
        self._answered = float("-inf")  # loop time of the server's last answer to a start
        self._silent = float("-inf")  # loop time a start found the server silent
        self._waiting = 0

    def _semaphore(self) -> asyncio.Semaphore:
        """The semaphore of the running loop (a new engine loop gets a new one)."""
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots_loop is not loop:
            self._slots, self._slots_loop = asyncio.Semaphore(self.limit), loop
        return self._slots

    async def start_job(
        self,
        client: Client,
        job: JobInput,
        job_id: str,
        task_queue: str,
        delay: timedelta | None,
        registration: Registration,
    ) -> bool:
        """Start `job`'s workflow; False if a workflow with its id existed already.

        It carries jobkit's search attributes, unless the server refuses them
        (`_attributes`): then it starts without. Raises `EngineUnavailableError` when the
        start did not get through, and the `RPCError` of any other refusal.
        """
        token = uuid.uuid4().hex  # tells this dispatch's workflow from one that existed
        rpc = timedelta(seconds=self.rpc_timeout)
        attributes = await registration.for_job(
            client, rpc, job.job_name, job.queue, job.created_at
        )

        async def attempt(rpc_timeout: timedelta) -> None:
            await client.start_workflow(
                WORKFLOW_NAME,
                job,
                id=job_id,
                task_queue=task_queue,
                # One run per job id, ever: a repeat, or a dispatch after the job ended, is
                # a no-op.
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                start_delay=delay,
                memo={**JobState.initial(job).memo(), DISPATCH_KEY: token},
                search_attributes=attributes,
                static_summary=job.job_name,  # the Temporal UI shows it beside the type
                # With a worker of this client in this process, the server hands it the
                # first workflow task in the reply: one round trip less.
                request_eager_start=delay is None,
                rpc_timeout=rpc_timeout,
            )

        try:
            outcome = await self.start(attempt)
        except RPCError as exc:  # refused before anything was written
            if not attributes.search_attributes or not registration.refused(exc):
                raise
            attributes = TypedSearchAttributes.empty
            outcome = await self.start(attempt)
        if isinstance(outcome, Started) or not outcome.maybe_ours:
            return isinstance(outcome, Started)
        # An attempt that timed out may have created it: read back whose token it holds.
        handle = client.get_workflow_handle(job_id, run_id=outcome.run_id)
        description = await handle.describe(rpc_timeout=timedelta(seconds=self.rpc_timeout))
        return await description.memo_value(DISPATCH_KEY, None) == token

    async def start(self, attempt: Callable[[timedelta], Awaitable[object]]) -> Started | Conflict:
        """Run `attempt(rpc_timeout)` in a slot until it answers or the deadline passes.

        Raises `EngineUnavailableError` when it did not get through, and the `RPCError`
        of any other refusal.
        """
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        deadline = arrived + self.timeout
        slots = self._semaphore()
        self._waiting += 1
        try:
            async with asyncio.timeout_at(deadline):
                await slots.acquire()
        except TimeoutError:
            raise self._busy(f"no start slot was free for {self.timeout:g} s") from None
        finally:
            self._waiting -= 1
        try:
            if self._silent > arrived and self._answered < self._silent:
                raise EngineUnavailableError(
                    f"Temporal at {self.address} answered no start for {self.rpc_timeout:g} s"
                )
            return await self._attempts(attempt, deadline)
        finally:
            slots.release()

    async def _attempts(
        self, attempt: Callable[[timedelta], Awaitable[object]], deadline: float
    ) -> Started | Conflict:
        loop = asyncio.get_running_loop()
        maybe_applied = False
        backoff = _FIRST_BACKOFF
        while True:
            left = deadline - loop.time()
            try:
                await attempt(timedelta(seconds=max(0.001, min(self.rpc_timeout, left))))
            except WorkflowAlreadyStartedError as exc:
                self._answered = loop.time()
                return Conflict(exc.run_id, maybe_applied)
            except RPCError as exc:
                now = loop.time()
                if exc.status in _PUSHED_BACK:
                    self._answered = now
                elif exc.status not in _UNANSWERED:
                    raise
                else:
                    maybe_applied = True
                    if now - self._answered > self.rpc_timeout:  # no one was answered
                        self._silent = now
                        raise
                if now + backoff >= deadline:
                    why = f"the start did not get through in {self.timeout:g} s: {exc}"
                    raise self._busy(why) from exc
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, _MAX_BACKOFF)
            else:
                self._answered = loop.time()
                return Started()

    def _busy(self, why: str) -> EngineUnavailableError:
        return EngineUnavailableError(
            f"Temporal at {self.address} is busy: {why} "
            f"({self.limit} starts in flight at most, {self._waiting} waiting)"
        )
