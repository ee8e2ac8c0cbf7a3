"""A step's exception as JSON, and back: the same on every engine.

On Temporal a step runs in an activity, so its exception must cross a process boundary;
inline and RQ run the step in the worker itself, but send its exception through the same
encoding so that a handler sees the same thing everywhere: an exception of the step's own
class (looked up where its module is loaded: a name in a failure never makes a worker
import anything), with the step's message and its JSON-able attributes, chained to the
step's traceback. Attributes that are not JSON are dropped on every engine, not only where
the exception crossed a wire.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from types import ModuleType
from typing import Any

from pydantic_core import to_jsonable_python

from jobkit.errors import NonRetryableError, PayloadTooLargeError, StepError

Importer = Callable[[str], ModuleType]

_stand_ins: dict[tuple[str, bool], type[Exception]] = {}
_verbatims: dict[type[Exception], type[Exception]] = {}


class RemoteTraceback(Exception):
    """The traceback of a step's exception, as the process that ran the step printed it."""

    def __str__(self) -> str:
        return f"\n{self.args[0]}" if self.args and self.args[0] else ""


class StepFailedError(Exception):
    """Base of the stand-ins for exception classes that cannot be imported here."""


class FatalStepFailedError(StepFailedError, NonRetryableError):
    """Stand-in base for a step's `NonRetryableError` whose class cannot be imported."""


def is_fatal(exc: BaseException) -> bool:
    """Whether this exception fails the job at once, whatever its retry policy."""
    return isinstance(exc, NonRetryableError | StepError | PayloadTooLargeError)


def encode_exception(exc: BaseException) -> dict[str, Any]:
    """`exc` as JSON data: class, message, whether it is fatal, attributes, traceback."""
    cls = type(exc)
    return {
        "module": cls.__module__,
        "qualname": cls.__qualname__,
        "type": cls.__name__,
        "message": str(exc),
        "fatal": is_fatal(exc),
        "attributes": _json_attributes(exc),
        "traceback": "".join(traceback.format_exception(exc)),
    }


def decode_exception(data: dict[str, Any], importer: Importer | None = None) -> Exception:
    """An exception of the encoded class (or a stand-in of the same name), chained to the
    step's traceback. `importer` finds a module by name (the Temporal workflow passes one
    that reaches outside its sandbox); by default only a module this process has loaded
    already, so data never makes a worker import anything."""
    message = str(data.get("message", ""))
    type_name = str(data.get("type") or "StepFailedError")
    cls = _load_class(data.get("module"), data.get("qualname"), importer or _import_known)
    exc = _instance(cls, message) if cls is not None else None
    if exc is None:
        exc = _stand_in(type_name, bool(data.get("fatal")))(message)
    attributes = data.get("attributes")
    if isinstance(attributes, dict):
        for name, value in attributes.items():
            try:
                setattr(exc, name, value)
            except Exception:  # a read-only attribute: the class computes it itself
                continue
    exc.__cause__ = RemoteTraceback(data.get("traceback") or "")
    return exc


def _json_attributes(exc: BaseException) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    for name, value in getattr(exc, "__dict__", {}).items():
        if name.startswith("__"):
            continue
        try:
            attributes[name] = to_jsonable_python(value)
        except Exception:  # not JSON: dropped, on every engine alike
            continue
    return attributes


def _import_known(module: str) -> ModuleType:
    loaded = sys.modules.get(module)
    if loaded is None:
        raise ImportError(f"{module} is not loaded in this process")
    return loaded


def _load_class(module: Any, qualname: Any, importer: Importer) -> type[Exception] | None:
    if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
        return None
    try:
        target: Any = importer(module)
    except Exception:  # not importable here: a stand-in of the same name
        return None
    for part in qualname.split("."):
        target = getattr(target, part, None)
    if isinstance(target, type) and issubclass(target, Exception):
        return target
    return None


def _instance(cls: type[Exception], message: str) -> Exception | None:
    """An instance of `cls` whose `str()` is `message`, made without calling `__init__`
    (which may want other arguments), as pickle does; where the class formats its message
    itself (KeyError quotes it), a subclass of the same name that shows it as it was."""
    for candidate in (cls, _verbatim(cls)):
        try:
            exc = candidate.__new__(candidate)
            exc.args = (message,)
            if str(exc) == message:
                return exc
        except Exception:  # a class that cannot be made so: try the next way
            continue
    return None


def _verbatim_str(self: BaseException) -> str:
    return str(self.args[0]) if self.args else ""


def _verbatim(cls: type[Exception]) -> type[Exception]:
    sub = _verbatims.get(cls)
    if sub is None:
        namespace = {"__str__": _verbatim_str, "__module__": cls.__module__}
        sub = _verbatims[cls] = type(cls.__name__, (cls,), namespace)
        sub.__qualname__ = cls.__qualname__
    return sub


def _stand_in(type_name: str, fatal: bool) -> type[Exception]:
    key = (type_name, fatal)
    cls = _stand_ins.get(key)
    if cls is None:
        base = FatalStepFailedError if fatal else StepFailedError
        cls = _stand_ins[key] = type(type_name, (base,), {"__module__": __name__})
    return cls
