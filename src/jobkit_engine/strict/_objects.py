"""What a path in Temporal's restriction list names, in terms of live objects: a module's
own members (not what it merely imports), a class's methods with its bases', and which of
them are worth a lookup."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from enum import Enum
from typing import Any

# Class machinery that runs on its own (isinstance, garbage collection, repr in a log
# line): not a use of the class by the job.
HARMLESS = frozenset(
    {
        "__subclasshook__",
        "__init_subclass__",
        "__class_getitem__",
        "__instancecheck__",
        "__subclasscheck__",
        "__del__",
        "__repr__",
        "__getattr__",
        "__getattribute__",
    }
)
# The C modules behind public ones: their functions count as the public module's.
C_TWINS = frozenset({"posix", "nt"})


def builtins_module() -> types.ModuleType:
    return sys.modules["builtins"]


def members(obj: Any) -> Iterator[tuple[str, Any]]:
    namespace = vars(obj) if isinstance(obj, types.ModuleType) else None
    if namespace is not None:
        yield from list(namespace.items())
        return
    for name in dir(obj):
        try:
            yield name, getattr(obj, name)
        except Exception:  # a property that fails on the class: nothing to call
            continue


def belongs(member: Any, owner: Any) -> bool:
    """Whether `member` is defined by `owner`'s module (or its C twin), not merely
    imported into it: `os.Mapping` is collections.abc's, and stays allowed."""
    if isinstance(member, types.ModuleType):
        return False
    home = getattr(owner, "__name__", None) if isinstance(owner, types.ModuleType) else None
    if home is None:
        home = getattr(owner, "__module__", None) or ""
    defined = getattr(member, "__module__", None)
    if defined is None and not callable(member):
        defined = type(member).__module__
    if defined is None:
        return True
    return (
        defined == home
        or defined.startswith(f"{home}.")
        or defined in C_TWINS
        or (defined.startswith("_") and defined != "__main__")
    )


def is_service(obj: Any) -> bool:
    """An object whose methods do the work, such as `os.environ` (not a constant)."""
    if callable(obj) or isinstance(obj, int | float | str | bytes | tuple | frozenset | Enum):
        return False
    return not isinstance(obj, list | dict | set)


def class_members(cls: type) -> Iterator[tuple[str, Any]]:
    """A class's attributes as defined (not bound), base classes included, except
    what every object has from `object`."""
    seen: set[str] = set()
    for klass in cls.__mro__:
        if klass is object:
            break
        for name, attr in vars(klass).items():
            if name not in seen:
                seen.add(name)
                yield name, attr


def function_of(attr: Any) -> types.FunctionType | None:
    if isinstance(attr, staticmethod | classmethod):
        attr = attr.__func__
    elif isinstance(attr, property):
        attr = attr.fget
    return attr if isinstance(attr, types.FunctionType) else None


def is_c_method(attr: Any) -> bool:
    return isinstance(
        attr,
        types.MethodDescriptorType
        | types.ClassMethodDescriptorType
        | types.BuiltinFunctionType
        | types.WrapperDescriptorType,
    )
