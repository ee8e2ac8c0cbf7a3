"""The step rules, one set for every engine: what a step function may be, and how its
arguments and result cross to wherever it runs.

A job falls back to Temporal exactly when Redis is in trouble, so whatever Temporal cannot
do is refused here, for every engine, instead of being found out on fallback:
- a step function is named by its import path (`module:qualname`), because a Temporal
  worker runs it by that name: lambdas, closures, partials, methods bound to an instance,
  functions of `__main__` and of the standard library have none that a worker can use;
- arguments and results are JSON, turned back into the types the function annotates (an
  unannotated parameter receives JSON: dicts, lists, strings, numbers), on every engine;
- the JSON of a payload, a step's arguments, a step's result and a job's result is at most
  `max_bytes` long, checked before it is sent;
- a value that cannot be encoded fails the job at once: retrying cannot fix it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import sys
import typing
from collections.abc import Callable
from typing import Any

from jobkit.errors import PayloadTooLargeError, StepError
from jobkit_engine._codec import adapter_for, to_json

DEFAULT_MAX_BYTES = 1_048_576


def json_size(value: Any) -> int:
    """Bytes of `value`'s JSON as every engine sends it (UTF-8, no NaN or infinity).

    Raises `TypeError` for a value that has no such JSON (e.g. a lone surrogate from
    undecodable bytes, a NaN).
    """
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return len(text.encode("utf-8"))
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError
        raise TypeError(str(exc)) from None


def encode(value: Any, what: str, max_bytes: int) -> Any:
    """`value` as JSON data within `max_bytes`; `StepError` (not JSON) or
    `PayloadTooLargeError` (too long) naming `what` otherwise."""
    try:
        data = to_json(value)
        size = json_size(data)
    except TypeError as exc:
        raise StepError(f"{what} is not JSON: {exc}") from None
    if size > max_bytes:
        raise PayloadTooLargeError(what, size, max_bytes)
    return data


def step_ref(step_id: str, fn: Callable[..., Any]) -> str:
    """`module:qualname` of a step function, or a `StepError` saying why it has none."""
    owner = getattr(fn, "__self__", None)
    if inspect.ismethod(fn) and not inspect.isclass(owner):
        raise StepError(
            f"step {step_id!r}: {fn.__qualname__} is a method bound to an instance, which a "
            "worker cannot rebuild; use a module-level function, a staticmethod or a "
            "classmethod"
        )
    if inspect.ismethod(fn) and fn.__qualname__.rpartition(".")[0] != owner.__qualname__:
        raise StepError(
            f"step {step_id!r}: {fn.__qualname__} is inherited by {owner.__qualname__}, but a "
            f"worker would call it on {fn.__qualname__.rpartition('.')[0]}; call it on the "
            "class that defines it, or define it on this class"
        )
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
        raise StepError(
            f"step {step_id!r}: {fn!r} has no import path (module:qualname), which a worker "
            "needs to run it (lambdas, closures and functools.partial have none); define the "
            "step function at module level and pass what varies as arguments"
        )
    ref = f"{module}:{qualname}"
    if module == "__main__":
        raise StepError(
            f"step {step_id!r}: {qualname} is defined in __main__, which a worker process "
            "cannot import; move it into a module of your application"
        )
    _refuse_library(step_id, ref)
    if _resolved(fn, module, qualname) is not getattr(fn, "__func__", fn):
        raise StepError(
            f"step {step_id!r}: {ref} does not name this function at module level (is it "
            "decorated, or redefined?); a worker would run something else"
        )
    return ref


def resolve_ref(ref: str) -> Callable[..., Any]:
    """The step function named `ref`, from a module this process has imported already;
    a `StepError` otherwise.

    A step's name arrives as data (an activity type), so it never makes a worker import
    anything: the modules a worker runs steps from are those its job modules brought in
    (`--import`), and nothing of the standard library.
    """
    module_name, _, qualname = ref.partition(":")
    _refuse_library(ref, ref)
    target: Any = sys.modules.get(module_name)
    if target is None:
        raise StepError(
            f"step function {ref}: this worker has not imported {module_name!r}; a step "
            "function must live in a module the worker's job modules import"
        )
    for part in qualname.split("."):
        target = None if part.startswith("__") else getattr(target, part, None)
    # What the name leads to must be defined there under that name: `mod:os.system`
    # reaches a library function through a module's imports, and is refused.
    function = getattr(target, "__func__", target)
    defined_at = (getattr(function, "__module__", None), getattr(function, "__qualname__", None))
    if not callable(target) or defined_at != (module_name, qualname):
        raise StepError(f"step function {ref} is not a function defined in {module_name!r}")
    return target


def _refuse_library(step_id: str, ref: str) -> None:
    """Functions of the standard library are refused as steps: a step type is chosen by
    job code, and refusing `os:system` keeps a forged one from running anything."""
    module, _, qualname = ref.partition(":")
    top = module.partition(".")[0]
    if not qualname or top in sys.stdlib_module_names or top == "builtins":
        raise StepError(
            f"step {step_id!r}: {ref} is not a step function of the application; wrap the "
            "library call in a module-level function of your own"
        )


def _resolved(fn: Callable[..., Any], module: str, qualname: str) -> Any:
    """What `module:qualname` names, looked up from the function's own module globals
    (inside Temporal's workflow sandbox `sys.modules` is not the worker's)."""
    first, *rest = qualname.split(".")
    namespace = getattr(getattr(fn, "__func__", fn), "__globals__", None)
    if isinstance(namespace, dict) and namespace.get("__name__") == module:
        target: Any = namespace.get(first)
    else:  # written in C, or wrapped by a decorator of another module
        target = getattr(sys.modules.get(module), first, None)
    for part in rest:
        target = getattr(target, part, None)
    return getattr(target, "__func__", target)


def encode_call(
    step_id: str, ref: str, args: tuple[Any, ...], kwargs: dict[str, Any], max_bytes: int
) -> dict[str, Any]:
    """A step's arguments as the JSON every engine sends: `{"args": [...], "kwargs": {...}}`."""
    what = f"the arguments of step {step_id!r} ({ref})"
    return encode({"args": list(args), "kwargs": kwargs}, what, max_bytes)


def typed_arguments(
    fn: Callable[..., Any], call: dict[str, Any]
) -> tuple[list[Any], dict[str, Any]]:
    """JSON arguments → the types `fn` annotates. An argument without an annotation, or
    one that does not fit it, stays JSON, as on every engine."""
    args, kwargs = list(call.get("args", [])), dict(call.get("kwargs", {}))
    try:
        signature = inspect.signature(fn)
        hints = typing.get_type_hints(fn)
    except (TypeError, ValueError, NameError):  # builtins, unresolvable annotations
        return args, kwargs
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise StepError(
            f"step function {fn.__qualname__} cannot take these arguments: {exc}"
        ) from None
    for name, value in bound.arguments.items():
        hint = hints.get(name)
        kind = signature.parameters[name].kind
        if hint is None or hint is Any or kind in (kind.VAR_POSITIONAL, kind.VAR_KEYWORD):
            continue
        with contextlib.suppress(Exception):
            bound.arguments[name] = adapter_for(hint).validate_python(value)
    return list(bound.args), dict(bound.kwargs)


async def run_step_function(
    step_id: str, ref: str, fn: Callable[..., Any], call: dict[str, Any], max_bytes: int
) -> Any:
    """Run a step function on its JSON arguments and return its result as JSON: what a
    worker does wherever the step runs (in the job's worker, or in a Temporal activity).

    The function's own exception propagates as raised; a result that is not JSON or too
    large raises `StepError` / `PayloadTooLargeError`, which fail the job at once.
    """
    positional, keywords = typed_arguments(fn, call)
    value = await call_step_function(fn, positional, keywords)
    return encode(value, f"the result of step {step_id!r} ({ref})", max_bytes)


async def call_step_function(
    fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]
) -> Any:
    # Sync step functions run in a thread: a blocking call must not stall the event loop
    # that other jobs of the same worker share.
    if inspect.iscoroutinefunction(fn):
        return await fn(*args, **kwargs)
    result = await asyncio.to_thread(fn, *args, **kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result
