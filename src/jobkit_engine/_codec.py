"""JSON on the way out, typed values on the way back in.

Payloads, step results and job results cross process boundaries as JSON. Values are
turned back into their annotated types (pydantic models included) from the annotation of
the function that produced them, so a replayed step returns what the live step returned.
"""

from __future__ import annotations

import contextlib
import functools
import typing
import weakref
from collections.abc import Callable
from typing import Any

from pydantic import TypeAdapter
from pydantic_core import PydanticSerializationError, to_jsonable_python

_NO_ADAPTER: Any = object()
_return_adapters: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def to_json(value: Any) -> Any:
    """`value` as plain JSON data (dicts, lists, str, numbers, bool, None)."""
    try:
        return to_jsonable_python(value)
    except PydanticSerializationError as exc:
        raise TypeError(f"{type(value).__name__} is not JSON-serialisable: {exc}") from None


@functools.lru_cache(maxsize=512)
def adapter_for(annotation: Any) -> TypeAdapter[Any]:
    return TypeAdapter(annotation)


def return_adapter(fn: Callable[..., Any]) -> TypeAdapter[Any] | None:
    """A TypeAdapter for `fn`'s return annotation, or None when it has none worth using."""
    target = getattr(fn, "__func__", fn)
    try:
        cached = _return_adapters.get(target)
    except TypeError:  # not weak-referenceable (e.g. a builtin): compute every time
        return _compute_return_adapter(target)
    if cached is None:
        cached = _compute_return_adapter(target) or _NO_ADAPTER
        with contextlib.suppress(TypeError):
            _return_adapters[target] = cached
    return None if cached is _NO_ADAPTER else cached


def _compute_return_adapter(fn: Callable[..., Any]) -> TypeAdapter[Any] | None:
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable or absent annotations: keep the JSON form
        return None
    annotation = hints.get("return", Any)
    if annotation is Any or annotation is type(None):
        return None
    try:
        return adapter_for(annotation)
    except Exception:  # an annotation pydantic cannot handle: keep the JSON form
        return None


def from_json_for(fn: Callable[..., Any], data: Any) -> Any:
    adapter = return_adapter(fn)
    return data if adapter is None else adapter.validate_python(data)
