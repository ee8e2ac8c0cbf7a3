"""The Temporal engine: each job is a workflow, each step an activity, each sleep a timer.

`TemporalEngine` starts and inspects jobs; `worker.run_worker` serves queues. Importing
this package needs `temporalio` (`pip install 'jobkit-dispatch[temporal]'`); nothing else in
jobkit imports it.
"""

try:
    import temporalio  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the install
    from jobkit.errors import EngineNotInstalledError

    raise EngineNotInstalledError("temporal", "temporal", "temporalio") from exc

from jobkit_dispatch.engines.temporal.engine import TemporalEngine

__all__ = ["TemporalEngine"]
