"""A step's exception across the activity boundary.

A step runs as an activity whose type is the function's import path (`step_ref`, shared
by every engine). An exception it raises crosses back as a non-retryable
`ApplicationError` carrying `encode_exception`'s JSON; the workflow rebuilds it with
`decode_exception`, as every engine does, so a handler's `except httpx.ConnectError:` and
the job's retry policy (`NonRetryableError` fails at once) see what they would see on any
other engine. The exception's module is imported outside the workflow sandbox, where the
worker imported it already.
"""

from __future__ import annotations

import asyncio
import sys
from types import ModuleType
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, ApplicationErrorCategory
from temporalio.exceptions import CancelledError as TemporalCancelledError
from temporalio.exceptions import TimeoutError as TemporalTimeoutError

from jobkit.errors import JobTimeoutError
from jobkit_engine.runtime import decode_exception, encode_exception

FAILURE_KEY = "jobkit_exception"


def as_application_error(exc: BaseException) -> ApplicationError:
    """A step's exception as a non-retryable `ApplicationError` with its encoding.

    Non-retryable because attempts are the job's: Temporal retries a step only when its
    worker is lost or it times out, and the workflow decides about everything else.
    """
    # BENIGN: the worker logs it at DEBUG; the job records the error and logs the attempt.
    return ApplicationError(
        str(exc),
        {FAILURE_KEY: encode_exception(exc)},
        type=type(exc).__name__,
        non_retryable=True,
        category=ApplicationErrorCategory.BENIGN,
    )


def from_activity_error(step_id: str, error: ActivityError) -> BaseException:
    """What the handler should see for a step that failed with `error`; raise it
    `from` its `__cause__` (the step's own traceback when there is one)."""
    cause = error.cause
    failure: BaseException = error
    if isinstance(cause, TemporalCancelledError):
        # The job is being cancelled, or its attempt timed out: both end the handler as
        # asyncio cancellation does on every engine.
        failure = asyncio.CancelledError()
    elif isinstance(cause, TemporalTimeoutError):
        failure = JobTimeoutError(f"step {step_id!r} timed out ({cause.type.name})")
    elif isinstance(cause, ApplicationError) and (encoded := _encoded(cause)) is not None:
        return decode_exception(encoded, importer=_import_passed_through)
    failure.__cause__ = error if failure is not error else error.__cause__
    return failure


def _encoded(cause: ApplicationError) -> dict[str, Any] | None:
    details = cause.details
    if details and isinstance(details[0], dict) and isinstance(details[0].get(FAILURE_KEY), dict):
        return details[0][FAILURE_KEY]
    return None


_worker_modules: frozenset[str] = frozenset()


def remember_worker_modules() -> None:
    """Note the modules this worker has loaded (its job modules and what they import),
    before it serves: the only ones a failure may name. Inside the workflow sandbox
    `sys.modules` is the sandbox's, so the list is taken here, outside it."""
    global _worker_modules
    _worker_modules = frozenset(sys.modules)


def _import_passed_through(module: str) -> ModuleType:
    """The worker's module of an exception class, never one it has not loaded: a module
    name in a failure is data."""
    if module not in _worker_modules:
        raise ImportError(f"{module} is not a module this worker loaded")
    # `__import__`, not importlib: the sandbox decides pass-through in its `__import__`.
    # The module is loaded already: this finds it, it imports nothing.
    with workflow.unsafe.imports_passed_through():
        return __import__(module, fromlist=["__name__"])
