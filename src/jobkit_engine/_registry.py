"""The job registry: job name → `JobDefinition`, the only way a worker finds code to run."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from jobkit.errors import ConfigurationError, DuplicateJobError, UnknownJobError
from jobkit_engine._definition import JobDefinition


class JobRegistry:
    """Jobs known to this process, filled by `@job` as job modules are imported."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, JobDefinition[Any, Any]] = {}

    def register(self, definition: JobDefinition[Any, Any]) -> None:
        """Add `definition`. Re-importing the same handler replaces it; another one fails."""
        with self._lock:
            existing = self._jobs.get(definition.name)
            if existing is not None and existing.ref != definition.ref:
                raise DuplicateJobError(
                    f"job name {definition.name!r} is already registered by {existing.ref}; "
                    f"{definition.ref} cannot use it too"
                )
            self._jobs[definition.name] = definition

    def unregister(self, name: str) -> None:
        with self._lock:
            self._jobs.pop(name, None)

    def get(self, name: str) -> JobDefinition[Any, Any]:
        try:
            return self._jobs[name]
        except KeyError:
            raise UnknownJobError(name, self._jobs) from None

    def __contains__(self, name: object) -> bool:
        return name in self._jobs

    def __iter__(self) -> Iterator[JobDefinition[Any, Any]]:
        return iter(list(self._jobs.values()))

    def names(self) -> list[str]:
        return sorted(self._jobs)

    def modules(self) -> list[str]:
        """The modules whose `@job`s registered here: what a worker says it imports when it
        meets a job it does not know."""
        return sorted({definition.handler.__module__ for definition in self})

    def import_modules(self, modules: Iterable[str]) -> None:
        """Import each job module (their `@job`s register themselves)."""
        for module in modules:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise ConfigurationError(f"cannot import job module {module!r}: {exc}") from exc


default_registry = JobRegistry()


def import_job_modules(modules: Iterable[str]) -> None:
    """Import job modules into the process-wide registry (what `jobkit worker --import` does)."""
    default_registry.import_modules(modules)
