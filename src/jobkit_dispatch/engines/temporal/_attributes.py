"""jobkit's search attributes: what lets operators find jobs on Temporal.

Every job is a run of the one workflow type `jobkit.job`, so Temporal's own attributes
cannot tell one job from another. Each job's workflow is started with three custom
search attributes, all Keyword (so that one command registers them):

- `JobkitJobName`: the job's name (the Temporal UI also shows it as the run's summary);
- `JobkitQueue`: the jobkit queue;
- `JobkitCreatedAt`: when the job was created, as fixed-width ISO-8601 UTC text
  (`2026-01-02T03:04:05.123456Z`), which compares as text in time order. The listing
  orders open jobs by creation, and Temporal can only order runs by their start: a retried
  job's run starts long after the job was created (`_listing`).

A server must know them before a workflow can carry them: `temporal server start-dev`
takes `--search-attribute NAME=Keyword` (the test fixtures and `jobkit dev` pass them), a
production server needs `register_command()` once per namespace. The engine asks before
its first start (`Registration`); on a server that does not know them it logs a warning
naming that command once, starts jobs without them, and asks again every `RECHECK`
seconds. Listing still works without them (by queue through the task queue, open jobs
ordered by their start), except by job name.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta

from temporalio.client import Client
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from temporalio.service import RPCError, RPCStatusCode

from jobkit.errors import ConfigurationError

JOB_NAME = SearchAttributeKey.for_keyword("JobkitJobName")
QUEUE = SearchAttributeKey.for_keyword("JobkitQueue")
CREATED_AT = SearchAttributeKey.for_keyword("JobkitCreatedAt")
NAMES = (JOB_NAME.name, QUEUE.name, CREATED_AT.name)

RECHECK = 600.0  # seconds: a server refused them; try again after this long
# The server did not answer the question: it would not answer the start either.
_NO_ANSWER = {RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED}

log = logging.getLogger("jobkit.temporal")


def register_command(namespace: str = "default") -> str:
    """The command that registers jobkit's search attributes on a Temporal server."""
    # One `--type` per `--name`: the CLI pairs them in order (a single `--type` after
    # several names registers only the first).
    names = " ".join(f"--name {name} --type Keyword" for name in NAMES)
    return f"temporal operator search-attribute create --namespace {namespace} {names}"


def dev_server_flags() -> list[str]:
    """`temporal server start-dev` arguments that register them at start."""
    flags: list[str] = []
    for name in NAMES:
        flags += ["--search-attribute", f"{name}=Keyword"]
    return flags


def timestamp(at: datetime) -> str:
    """`at` as the fixed-width UTC text of `JobkitCreatedAt` and of visibility queries."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def of_job(job_name: str, queue: str, created_at: datetime) -> TypedSearchAttributes:
    return TypedSearchAttributes(
        [
            SearchAttributePair(JOB_NAME, job_name),
            SearchAttributePair(QUEUE, queue),
            SearchAttributePair(CREATED_AT, timestamp(created_at)),
        ]
    )


def unregistered(exc: BaseException) -> bool:
    """Whether `exc` is a server's refusal of a search attribute it does not know: at a
    start ("no mapping defined for search attribute") or in a query ("invalid search
    attribute")."""
    return (
        isinstance(exc, RPCError)
        and exc.status == RPCStatusCode.INVALID_ARGUMENT
        and "search attribute" in (exc.message or "")
    )


class Registration:
    """Whether the server (one namespace) takes jobkit's search attributes.

    Asked once, before the first start, with a count that names one: a start that names
    an attribute the server does not know is refused (and on Temporal's time-skipping
    test server, which has no visibility store at all, the refused start even leaves its
    id taken). Asked again `RECHECK` seconds after a refusal.
    """

    def __init__(self, address: str, namespace: str) -> None:
        self.address = address
        self.namespace = namespace
        self._known: bool | None = None  # None: not asked yet, or no answer
        self._refused_at = 0.0  # monotonic time of the last refusal
        self._asking: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None

    @property
    def usable(self) -> bool:
        """False for `RECHECK` seconds after the server refused them."""
        return self._known is not False or time.monotonic() - self._refused_at >= RECHECK

    def refused(self, exc: BaseException) -> bool:
        """Note `exc` if it is the server refusing them (a warning the first time)."""
        if not unregistered(exc):
            return False
        if self._refused_at == 0.0:
            log.warning(
                "the Temporal server at %s does not know jobkit's search attributes (%s): "
                "jobs start without them, and cannot be listed by job name; register "
                "them with: %s",
                self.address,
                exc,
                register_command(self.namespace),
            )
        self._known, self._refused_at = False, time.monotonic()
        return True

    async def for_job(
        self, client: Client, rpc_timeout: timedelta, job_name: str, queue: str, created: datetime
    ) -> TypedSearchAttributes:
        """The attributes to start a job with: none unless the server takes them. Raises
        the `RPCError` of a server that did not answer the question."""
        if self._known is None or (self._known is False and self.usable):
            await self._ask(client, rpc_timeout)
        return of_job(job_name, queue, created) if self._known else TypedSearchAttributes.empty

    def missing(self, what: str) -> ConfigurationError:
        """The error of a listing that needs them on a server without them."""
        return ConfigurationError(
            f"listing Temporal jobs {what} needs jobkit's search attributes, which the "
            f"server at {self.address} does not know: {register_command(self.namespace)}"
        )

    async def _ask(self, client: Client, rpc_timeout: timedelta) -> None:
        """One question in flight per loop, whoever asks meanwhile."""
        loop = asyncio.get_running_loop()
        if self._asking is None or self._asking[0] is not loop or self._asking[1].done():
            self._asking = (loop, loop.create_task(self._count(client, rpc_timeout)))
        await asyncio.shield(self._asking[1])

    async def _count(self, client: Client, rpc_timeout: timedelta) -> None:
        try:
            await client.count_workflows(f"{JOB_NAME.name} = 'jobkit'", rpc_timeout=rpc_timeout)
        except RPCError as exc:
            if exc.status in _NO_ANSWER:
                raise  # the start is not tried: a hung server costs one call, not two
            if self.refused(exc) or exc.status == RPCStatusCode.RESOURCE_EXHAUSTED:
                return  # busy: this start goes without them, the next one asks again
            log.info(
                "the Temporal server at %s has no visibility queries (%s): jobs start "
                "without jobkit's search attributes",
                self.address,
                exc.message,
            )
            self._known, self._refused_at = False, time.monotonic()
        else:
            self._known = True
