"""What Temporal refuses in workflow code, as lookups a profile hook can afford.

The source is temporalio's own list, `SandboxRestrictions.default`: its
`invalid_module_members` matcher names module members by path (`datetime.datetime.now`,
`os.*`, `random.randint`). The sandbox enforces it by handing workflow code proxies of
those modules; here the same paths are resolved once to the objects they name — the code
object of a Python function, the identity of a C function — so that a call can be
recognised from the frame and the callable a profile event carries.

Like the sandbox, only calls made by code that the sandbox would load itself are checked:
the job's own modules and third-party libraries. Code of the modules temporalio passes
through (the standard library, pydantic, temporalio) and jobkit's own runs as is, and so
do the calls it makes (logging reads the clock; that is not the job's doing).

Temporal's workflow event loop refuses more, whoever asks: threads, executors and sockets
(`loop.run_in_executor`, which `asyncio.to_thread` uses, `getaddrinfo`, `create_connection`).
Those calls are refused from any caller.
"""

from __future__ import annotations

import inspect
import sys
import threading
import types
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from jobkit_engine.strict._objects import (
    HARMLESS,
    belongs,
    builtins_module,
    class_members,
    function_of,
    is_c_method,
    is_service,
    members,
)

#: Methods of `asyncio.AbstractEventLoop` that Temporal's workflow event loop does not
#: implement, among those handler code can reach (a test checks them against temporalio).
LOOP_REFUSES = (
    "run_in_executor",
    "set_default_executor",
    "getaddrinfo",
    "getnameinfo",
    "create_connection",
    "create_server",
    "create_datagram_endpoint",
    "create_unix_connection",
    "create_unix_server",
    "connect_accepted_socket",
    "connect_read_pipe",
    "connect_write_pipe",
    "subprocess_exec",
    "subprocess_shell",
    "sendfile",
    "start_tls",
    "sock_recv",
    "sock_recv_into",
    "sock_recvfrom",
    "sock_recvfrom_into",
    "sock_sendall",
    "sock_sendto",
    "sock_connect",
    "sock_accept",
    "sock_sendfile",
    "add_reader",
    "add_writer",
    "add_signal_handler",
)

#: Modules whose code is trusted as the sandbox trusts its pass-through modules: jobkit,
#: and the test runner (its logging and warning capture run inside handler calls).
TRUSTED_MODULES = ("jobkit", "jobkit_engine", "jobkit_dispatch", "_pytest", "pytest", "pluggy")

#: Job modules shipped inside jobkit: checked like any application's job module.
JOB_MODULES_IN_JOBKIT = ("jobkit_dispatch.conformance", "jobkit_dispatch.demo")

# Temporal only warns about these (asyncio.wait, as_completed), or needs a debugger
# attached (breakpoint): neither is a failure on Temporal.
_SKIPPED = frozenset({"__builtins__.breakpoint"})


@dataclass(frozen=True)
class Refusal:
    """One callable that code outside steps may not call."""

    name: str  # as Temporal's list names it: "datetime.datetime.now"
    by: str  # "sandbox" | "loop"
    # Only when called on this object (random's hidden instance, os.environ): never shown,
    # it may hold secrets.
    self_is: Any = field(default=None, repr=False, compare=False)
    self_type: type | None = None  # only when called on an instance of this class

    @property
    def any_caller(self) -> bool:
        return self.by == "loop"

    def applies(self, frame: types.FrameType) -> bool:
        if self.self_is is None and self.self_type is None:
            return True
        code = frame.f_code
        if not code.co_argcount:
            return False
        first = frame.f_locals.get(code.co_varnames[0])
        if self.self_is is not None:
            return first is self.self_is
        return isinstance(first, self.self_type) or (
            isinstance(first, type) and issubclass(first, self.self_type)  # type: ignore[arg-type]
        )


class CallIndex:
    """Temporal's refusals, keyed the way profile events identify a callee."""

    def __init__(self, restrictions: Any, trusted: Iterable[str] = ()) -> None:
        self._matcher = restrictions.invalid_module_members
        self._invalid_modules = restrictions.invalid_modules
        self._passthrough = frozenset(restrictions.passthrough_modules) | frozenset(
            (*TRUSTED_MODULES, *trusted)
        )
        self.codes: dict[types.CodeType, tuple[Refusal, ...]] = {}
        self._c_by_id: dict[int, Refusal] = {}
        self._c_by_owner: dict[tuple[int, str], Refusal] = {}
        self._c_by_class: dict[tuple[type, str], Refusal] = {}
        self._c_loop: dict[tuple[type, str], Refusal] = {}
        self._class_cache: dict[tuple[type, str], Refusal | None] = {}
        self._checked: dict[types.CodeType, bool] = {}
        self._keep: list[Any] = []  # what the id()-keyed tables refer to stays alive
        self._indexed: set[int] = set()
        self._loops: set[type] = set()
        self._modules_seen = -1
        self._lock = threading.Lock()

    # -- lookups (called from the profile hook: keep them cheap) ---------------------------

    def checked(self, frame: types.FrameType) -> bool:
        """Whether calls made by this frame's code are checked (not trusted code)."""
        code = frame.f_code
        known = self._checked.get(code)
        if known is None:
            module = frame.f_globals.get("__name__") or ""
            known = self._checked[code] = not self._trusted(module)
        return known

    def c_refusal(self, fn: Any) -> Refusal | None:
        """The refusal for a C callable, if it is one."""
        found = self._c_by_id.get(id(fn))
        if found is not None:
            return found
        owner = getattr(fn, "__self__", None)
        name = getattr(fn, "__name__", "")
        found = self._c_by_owner.get((id(owner), name))
        if found is not None or owner is None or isinstance(owner, types.ModuleType):
            return found
        return self._by_class(owner if isinstance(owner, type) else type(owner), name)

    def c_loop_refusal(self, fn: Any) -> Refusal | None:
        """An event-loop method implemented in C (uvloop), refused whoever calls it."""
        if not self._c_loop:
            return None
        owner = getattr(fn, "__self__", None)
        return self._c_loop.get((type(owner), getattr(fn, "__name__", "")))

    def invalid_module(self, frame: types.FrameType) -> bool:
        """Whether this frame runs code of a module the sandbox will not even import."""
        module = frame.f_globals.get("__name__") or ""
        return bool(module) and self._invalid_modules.match_access(_RUNTIME, *module.split("."))

    def _by_class(self, cls: type, name: str) -> Refusal | None:
        key = (cls, name)
        if key in self._class_cache:
            return self._class_cache[key]
        found = None
        for klass in cls.__mro__:
            found = self._c_by_class.get((klass, name))
            if found is not None:
                break
        self._class_cache[key] = found
        return found

    def _trusted(self, module: str) -> bool:
        if module.startswith(JOB_MODULES_IN_JOBKIT):
            return False
        parts = module.split(".")
        return any(".".join(parts[:n]) in self._passthrough for n in range(1, len(parts) + 1))

    # -- building ------------------------------------------------------------------------

    def refresh(self) -> None:
        """Index the restricted modules imported since the last call (cheap when none were)."""
        if len(sys.modules) == self._modules_seen:
            return
        with self._lock:
            self._modules_seen = len(sys.modules)
            for name, matcher in self._matcher.children.items():
                module = builtins_module() if name == "__builtins__" else sys.modules.get(name)
                if module is not None:
                    self._walk(matcher, module, name)

    def add_loop(self, loop_type: type) -> None:
        """Index the refused methods of an event loop class (once per class)."""
        if loop_type in self._loops:
            return
        with self._lock:
            self._loops.add(loop_type)
            for name in LOOP_REFUSES:
                method = inspect.getattr_static(loop_type, name, None)
                refusal = Refusal(f"loop.{name}", "loop")
                if isinstance(method, types.FunctionType):
                    self._add_code(method.__code__, refusal)
                elif method is not None:
                    self._c_loop[(loop_type, name)] = refusal
            start = threading.Thread.start
            self._add_code(start.__code__, Refusal("threading.Thread.start", "loop"))

    def _walk(self, matcher: Any, obj: Any, path: str) -> None:
        """Restrict what `matcher` matches below `obj` (a module, class or instance)."""
        if id(obj) in self._indexed and isinstance(obj, types.ModuleType):
            # A module is walked again only for submodules imported since.
            self._walk_submodules(matcher, obj, path)
            return
        if isinstance(obj, types.ModuleType):
            self._indexed.add(id(obj))
            self._keep.append(obj)
        everything = matcher.match_self or "*" in matcher.use or "*" in matcher.access
        named = set(matcher.use) | set(matcher.access)
        for name, member in members(obj):
            if name in matcher.exclude or f"{path}.{name}" in _SKIPPED:
                continue
            child = matcher.children.get(name) or matcher.children.get("*")
            if name in named or (everything and (child is not None or belongs(member, obj))):
                self._restrict(member, f"{path}.{name}", obj)
            elif child is not None and child.leaf_warning is None:
                self._walk_child(child, member, f"{path}.{name}")

    def _walk_child(self, matcher: Any, member: Any, path: str) -> None:
        if matcher.match_self:
            if path not in _SKIPPED:
                self._restrict(member, path, None)
        else:
            self._walk(matcher, member, path)

    def _walk_submodules(self, matcher: Any, module: types.ModuleType, path: str) -> None:
        for name, child in matcher.children.items():
            member = getattr(module, name, None)
            if isinstance(member, types.ModuleType) and id(member) not in self._indexed:
                self._walk_child(child, member, f"{path}.{name}")

    def _restrict(self, member: Any, path: str, owner: Any) -> None:
        """Refuse every use of `member`: call it, construct it, call its methods."""
        if isinstance(member, types.ModuleType):
            if id(member) not in self._indexed:
                self._walk(_ALL, member, path)
        elif isinstance(member, type):
            self._restrict_class(member, path)
        elif isinstance(member, types.FunctionType):
            self._add_code(member.__code__, Refusal(path, "sandbox"))
        elif isinstance(member, types.MethodType):
            bound = member.__self__
            instance = None if isinstance(bound, type | types.ModuleType) else bound
            self._add_code(member.__func__.__code__, Refusal(path, "sandbox", self_is=instance))
        elif isinstance(member, types.BuiltinFunctionType):
            refusal = Refusal(path, "sandbox")
            self._keep.append(member)
            self._c_by_id[id(member)] = refusal
            self._c_by_owner[(id(member.__self__), member.__name__)] = refusal
        elif owner is not None and is_service(member) and belongs(member, owner):
            self._restrict_instance(member, path)

    def _restrict_class(self, cls: type, path: str) -> None:
        for name, attr in class_members(cls):
            if name in HARMLESS:
                continue
            refusal = Refusal(f"{path}.{name}", "sandbox", self_type=cls)
            function = function_of(attr)
            if function is not None:
                self._add_code(function.__code__, refusal)
            elif is_c_method(attr):
                self._c_by_class[(cls, name)] = refusal
        self._class_cache.clear()

    def _restrict_instance(self, obj: Any, path: str) -> None:
        """An object such as `os.environ`: its methods, called on it."""
        self._keep.append(obj)
        for name, attr in class_members(type(obj)):
            if name in HARMLESS:
                continue
            refusal = Refusal(f"{path}.{name}", "sandbox", self_is=obj)
            function = function_of(attr)
            if function is not None:
                self._add_code(function.__code__, refusal)
            elif is_c_method(attr):
                self._c_by_owner[(id(obj), name)] = refusal

    def _add_code(self, code: types.CodeType, refusal: Refusal) -> None:
        existing = self.codes.get(code, ())
        if not any(r == refusal and r.self_is is refusal.self_is for r in existing):
            self.codes[code] = (*existing, refusal)


class _RuntimeContext:
    is_runtime = True  # what temporalio's matchers ask: checks at run time, not import time
    in_activation = True


_RUNTIME = _RuntimeContext()


class _AllMatcher:
    match_self = True
    use: frozenset[str] = frozenset()
    access: frozenset[str] = frozenset()
    exclude: frozenset[str] = frozenset()
    children: dict[str, Any] = {}
    leaf_warning = None


_ALL = _AllMatcher()


_indexes: dict[tuple[str, ...], CallIndex] = {}
_index_lock = threading.Lock()


def call_index(trusted: tuple[str, ...] = ()) -> CallIndex | None:
    """The index of temporalio's default restrictions (one per process and `trusted`), or
    None when temporalio is not installed."""
    index = _indexes.get(trusted)
    if index is None:
        try:
            from temporalio.worker.workflow_sandbox import SandboxRestrictions
        except ImportError:
            return None
        with _index_lock:
            index = _indexes.get(trusted)
            if index is None:
                index = _indexes[trusted] = CallIndex(SandboxRestrictions.default, trusted)
    return index
