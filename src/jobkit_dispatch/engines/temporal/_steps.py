"""Steps across the activity boundary: naming a step function, and its exceptions.

A step runs as an activity whose type is the function's import path (`module:qualname`),
so the worker that runs it finds the same function. An exception a step raises crosses
back as an `ApplicationError` that names its class; the workflow raises an exception of
that class again, so a handler's `except ConnectionError:` and the job's retry policy
(`NonRetryableError` fails at once) see what they would see on any other engine.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import sys
import traceback
from collections.abc import Callable
from typing import Any

from temporalio.exceptions import ActivityError, ApplicationError, ApplicationErrorCategory
from temporalio.exceptions import CancelledError as TemporalCancelledError
from temporalio.exceptions import TimeoutError as TemporalTimeoutError

from jobkit.errors import JobTimeoutError, NonRetryableError, StepError

_FAILURE_KEY = "jobkit_exception"


class RemoteTraceback(Exception):
    """The traceback of a step's exception, as the worker that ran it printed it."""

    def __str__(self) -> str:
        return f"\n{self.args[0]}" if self.args and self.args[0] else ""


class StepFailedError(Exception):
    """Base of the stand-ins for exception classes the workflow cannot load by name."""


class FatalStepFailedError(StepFailedError, NonRetryableError):
    """Stand-in base for a step's `NonRetryableError` whose class cannot be loaded."""


_stand_ins: dict[tuple[str, bool], type[Exception]] = {}
_verbatims: dict[type[Exception], type[Exception]] = {}


def step_ref(step_id: str, fn: Callable[..., Any]) -> str:
    """`module:qualname` of a step function, or a `StepError` saying why it has none."""
    owner = getattr(fn, "__self__", None)
    if inspect.ismethod(fn) and not inspect.isclass(owner):
        raise StepError(
            f"step {step_id!r}: {fn.__qualname__} is a method bound to an instance, which a "
            "Temporal worker cannot rebuild; use a module-level function, a staticmethod or "
            "a classmethod"
        )
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
        raise StepError(
            f"step {step_id!r}: {fn!r} cannot run on Temporal, which runs a step in a worker "
            "by its import path (module:qualname); lambdas, closures and partials have none, "
            "so define the step function at module level"
        )
    return f"{module}:{qualname}"


def resolve_ref(ref: str) -> Callable[..., Any]:
    """The step function named `ref`; a `StepError` for anything else.

    Functions of the standard library are refused: a step type is chosen by job code, and
    refusing `os:system` keeps a forged one from becoming a way to run anything.
    """
    module_name, _, qualname = ref.partition(":")
    top = module_name.partition(".")[0]
    if not qualname or top in sys.stdlib_module_names or top == "builtins":
        raise StepError(
            f"{ref!r} is not a step function of the application; wrap library calls in a "
            "function of your own"
        )
    try:
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise StepError(f"cannot import step function {ref}: {exc}") from None
    if not callable(target):
        raise StepError(f"step function {ref} is not callable")
    return target


def as_application_error(exc: BaseException) -> ApplicationError:
    """A step's exception as a non-retryable `ApplicationError` that names its class.

    Non-retryable because attempts are the job's: Temporal retries a step only when its
    worker is lost or it times out, and the workflow decides about everything else.
    """
    cls = type(exc)
    described = {
        "module": cls.__module__,
        "qualname": cls.__qualname__,
        "fatal": isinstance(exc, NonRetryableError | StepError),
        "traceback": "".join(traceback.format_exception(exc)),
    }
    # BENIGN: the worker logs it at DEBUG; the job records the error and logs the attempt.
    return ApplicationError(
        str(exc),
        {_FAILURE_KEY: described},
        type=cls.__name__,
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
    elif isinstance(cause, ApplicationError) and (described := _described(cause)) is not None:
        failure = _rebuild(described, cause.type or "StepFailedError", cause.message)
        failure.__cause__ = RemoteTraceback(described.get("traceback") or "")
        return failure
    failure.__cause__ = error if failure is not error else error.__cause__
    return failure


def _described(cause: ApplicationError) -> dict[str, Any] | None:
    details = cause.details
    if details and isinstance(details[0], dict) and isinstance(details[0].get(_FAILURE_KEY), dict):
        return details[0][_FAILURE_KEY]
    return None


def _rebuild(described: dict[str, Any], type_name: str, message: str) -> Exception:
    """An exception of the step's class whose `str()` is the step's message."""
    cls = _loaded_class(described.get("module"), described.get("qualname"))
    if cls is not None:
        # __init__ may want other arguments than a message: set args as pickle would, and
        # where the class formats its message itself (KeyError quotes it), use a subclass
        # of the same name that shows the message as it was.
        for candidate in (cls, _verbatim(cls)):
            try:
                exc = candidate.__new__(candidate)
                exc.args = (message,)
                if str(exc) == message:
                    return exc
            except Exception:  # a class that cannot be made so: try the next way
                continue
    return _stand_in(type_name, bool(described.get("fatal")))(message)


def _verbatim_str(self: BaseException) -> str:
    return str(self.args[0]) if self.args else ""


def _verbatim(cls: type[Exception]) -> type[Exception]:
    sub = _verbatims.get(cls)
    if sub is None:
        namespace = {"__str__": _verbatim_str, "__module__": cls.__module__}
        sub = _verbatims[cls] = type(cls.__name__, (cls,), namespace)
        sub.__qualname__ = cls.__qualname__
    return sub


def _loaded_class(module: Any, qualname: Any) -> type[Exception] | None:
    """The exception class if its module is already loaded here; never imports."""
    if not isinstance(module, str) or not isinstance(qualname, str):
        return None
    # Membership first: inside the workflow sandbox that is what lets a passed-through
    # module (jobkit's, a job module's) show up.
    target: Any = sys.modules[module] if module in sys.modules else None  # noqa: SIM401
    for part in qualname.split("."):
        target = getattr(target, part, None)
    if isinstance(target, type) and issubclass(target, Exception):
        return target
    return None


def _stand_in(type_name: str, fatal: bool) -> type[Exception]:
    key = (type_name, fatal)
    cls = _stand_ins.get(key)
    if cls is None:
        base = FatalStepFailedError if fatal else StepFailedError
        cls = _stand_ins[key] = type(type_name, (base,), {"__module__": __name__})
    return cls
