"""What of a Temporal engine belongs to one process: across a fork, and at exit.

**Fork.** temporalio's client runs on a Rust runtime whose threads, like the engine's
loop thread, exist only in the process that started them. A child forked after its parent
used Temporal (gunicorn `--preload`, Celery prefork) inherits these objects without their
threads: a call would wait on a loop that nobody runs. So in the child each engine forgets
them and connects again on first use, on a runtime of the child's own. What it forgot is
kept and never freed, not even when the child exits: freeing it waits for the threads that
stayed in the parent, forever. The parent's objects are not touched.

**Exit.** temporalio answers calls from its own threads. One that answers while the
interpreter finalizes kills it (`Fatal Python error: PyGILState_Release`); one that answers
a closed loop prints `Event loop is closed`. So when the interpreter exits (atexit), every
engine refuses new calls, stops its workers, lets the calls in flight end, and stops its
loop, before the interpreter finalizes.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

import temporalio.runtime
from temporalio.runtime import Runtime, TelemetryConfig

from jobkit_dispatch.engines.temporal import _loop

if TYPE_CHECKING:
    from jobkit_dispatch.engines.temporal.engine import TemporalEngine

_engines: weakref.WeakSet[TemporalEngine] = weakref.WeakSet()
_origin = os.getpid()  # the process that imported this module: temporalio's default runtime
_runtimes: dict[int, Runtime] = {}  # pid -> the runtime of a forked process
_lock = threading.Lock()
EXIT_SETTLE = 0.05  # seconds for temporalio's threads to hand back their last answers


def track(engine: TemporalEngine) -> None:
    """Look after `engine` across a fork and at exit."""
    _engines.add(engine)


def runtime() -> Runtime:
    """The temporalio runtime to connect with: the default one in the process that
    imported jobkit's Temporal engine, and one of its own in a forked child."""
    pid = os.getpid()
    if pid == _origin:
        return Runtime.default()
    with _lock:
        if pid not in _runtimes:
            _runtimes[pid] = Runtime(telemetry=TelemetryConfig())
        return _runtimes[pid]


def _keep_forever(value: Any) -> None:
    """A reference that is never released, so that `value` is never freed."""
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(value))


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # another thread of the parent may have held it
    # temporalio's default runtime, if the parent made one: the child never uses it, but
    # freeing it at exit would hang the child. (temporalio has no public getter for it.)
    default = getattr(getattr(temporalio.runtime, "_runtime_ref", None), "_default_runtime", None)
    if default is not None:
        _keep_forever(default)
    engines = list(_engines)
    loops = {*_loop.forget_running(), *(engine._loop for engine in engines)}
    _keep_forever([loop.forget_inherited() for loop in loops])
    for engine in engines:
        _keep_forever((engine._connection.forget_inherited(), list(engine._workers)))
        engine._workers.clear()


def _close_at_exit() -> None:
    _loop.refuse_all("the process is exiting")
    loops = _loop.running()
    for engine in list(_engines):
        if engine._loop in loops:
            engine.close()  # its workers first, then its loop
    for loop in _loop.running():  # a loop that outlived its engine
        loop.stop()
    if loops:
        time.sleep(EXIT_SETTLE)


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_at_exit)
