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
production server needs `REGISTER_COMMAND` once per namespace. A server that does not
know them refuses the start; the engine then logs a warning naming that command once,
starts jobs without them, and tries them again every `RECHECK` seconds. Listing still
works without them (by queue through the task queue, open jobs ordered by their start),
except by job name.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from temporalio.service import RPCError, RPCStatusCode

from jobkit.errors import ConfigurationError

JOB_NAME = SearchAttributeKey.for_keyword("JobkitJobName")
QUEUE = SearchAttributeKey.for_keyword("JobkitQueue")
CREATED_AT = SearchAttributeKey.for_keyword("JobkitCreatedAt")
NAMES = (JOB_NAME.name, QUEUE.name, CREATED_AT.name)

RECHECK = 600.0  # seconds: a server refused them; try again after this long

log = logging.getLogger("jobkit.temporal")


def register_command(namespace: str = "default") -> str:
    """The command that registers jobkit's search attributes on a Temporal server."""
    names = " ".join(f"--name {name}" for name in NAMES)
    return (
        f"temporal operator search-attribute create --namespace {namespace} {names} --type Keyword"
    )


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
    """Whether the server (one namespace) takes jobkit's search attributes, as far as this
    engine has seen."""

    def __init__(self, address: str, namespace: str) -> None:
        self.address = address
        self.namespace = namespace
        self._refused_at: float | None = None  # monotonic time of the last refusal

    @property
    def usable(self) -> bool:
        """False for `RECHECK` seconds after the server refused them."""
        refused = self._refused_at
        return refused is None or time.monotonic() - refused >= RECHECK

    def refused(self, exc: BaseException) -> bool:
        """Note `exc` if it is the server refusing them (a warning the first time)."""
        if not unregistered(exc):
            return False
        if self._refused_at is None:
            log.warning(
                "the Temporal server at %s does not know jobkit's search attributes (%s): "
                "jobs start without them, and cannot be listed by job name; register "
                "them with: %s",
                self.address,
                exc,
                register_command(self.namespace),
            )
        self._refused_at = time.monotonic()
        return True

    def for_job(self, job_name: str, queue: str, created_at: datetime) -> TypedSearchAttributes:
        """The attributes to start a job with: none while the server refuses them."""
        if not self.usable:
            return TypedSearchAttributes.empty
        return of_job(job_name, queue, created_at)

    def missing(self, what: str) -> ConfigurationError:
        """The error of a listing that needs them on a server without them."""
        return ConfigurationError(
            f"listing Temporal jobs {what} needs jobkit's search attributes, which the "
            f"server at {self.address} does not know: {register_command(self.namespace)}"
        )
