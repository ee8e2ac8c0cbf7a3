"""The Temporal engine: each job is a workflow, each step an activity, each sleep a timer.

`TemporalEngine` starts and inspects jobs; `worker.run_worker` serves queues;
`register_command()` is the command that registers jobkit's search attributes on a
server (`dev_server_flags()` those of `temporal server start-dev`). Importing
this package needs `temporalio` (`pip install 'jobkit-dispatch[temporal]'`); nothing else in
jobkit imports it.
"""

try:
    import temporalio  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the install
    from jobkit.errors import EngineNotInstalledError

    raise EngineNotInstalledError("temporal", "temporal", "temporalio") from exc

from jobkit_dispatch.engines.temporal._attributes import dev_server_flags, register_command
from jobkit_dispatch.engines.temporal.engine import TemporalEngine

__all__ = ["TemporalEngine", "dev_server_flags", "register_command"]
