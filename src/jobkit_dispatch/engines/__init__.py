"""Engines, loaded by name only when used: an RQ-only app never imports temporalio.

A third-party engine is named by its import path, `"package.module:EngineClass"`; nothing
here needs to change for it.
"""

from __future__ import annotations

import importlib
from typing import Any

from jobkit.errors import ConfigurationError
from jobkit.settings import JobkitSettings
from jobkit_dispatch.engines.base import Engine, EngineBase, JobRequest

BUILTIN_ENGINES = {
    "inline": "jobkit_dispatch.engines.inline:InlineEngine",
    "rq": "jobkit_dispatch.engines.rq:RQEngine",
    "temporal": "jobkit_dispatch.engines.temporal:TemporalEngine",
}


def load_engine(name: str, settings: JobkitSettings) -> Engine:
    """Build the engine `name` (built-in name or `module:Class`) from settings.

    Raises `ConfigurationError` (an `EngineNotInstalledError` when an extra is missing).
    """
    path = BUILTIN_ENGINES.get(name, name)
    module_name, _, class_name = path.partition(":")
    if not class_name:
        raise ConfigurationError(
            f"unknown engine {name!r}: use one of {sorted(BUILTIN_ENGINES)} or 'module:Class'"
        )
    try:
        module = importlib.import_module(module_name)
    except ConfigurationError:
        raise
    except ImportError as exc:
        raise ConfigurationError(f"engine {name!r} cannot be imported: {exc}") from exc
    cls: Any = getattr(module, class_name, None)
    if cls is None:
        raise ConfigurationError(f"engine {name!r}: {module_name} has no {class_name}")
    engine = cls.from_settings(settings) if hasattr(cls, "from_settings") else cls()
    if not isinstance(engine, Engine):
        raise ConfigurationError(f"engine {name!r} does not implement the Engine protocol")
    return engine


__all__ = ["BUILTIN_ENGINES", "Engine", "EngineBase", "JobRequest", "load_engine"]
